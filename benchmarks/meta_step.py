"""Time and peak memory of one meta-step (one task) per algorithm, at `tiny` and `official_256`.

  python benchmarks/meta_step.py [--variants tiny,official_256] [--algorithms reptile,fomaml,maml] [--repeats 3]

Each (variant, algorithm) runs in its own process, so the peak resident memory (`ru_maxrss`) is that step's; XLA's
own estimate of the step's temporary buffers is printed beside it. One task = the variant's support and query sets
(official_256: 1 support + 1 query pair; tiny: 4 + 4), 2 inner steps, random weights, fp32. MAML runs with
`meta.remat=True` (one inner step's activations kept at a time) and, for comparison, without.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(variant: str, algorithm: str, remat: bool, repeats: int) -> dict:
    import jax
    import numpy as np

    from metaportrait_jax.config import load_config
    from metaportrait_jax.convert.vgg import perceptual_features
    from metaportrait_jax.models.generator import dummy_batch
    from metaportrait_jax.train.meta_step import MetaTrainer

    config = load_config(os.path.join(REPO, "configs", f"meta_train.py:{variant}"),
                         [f"meta.algorithm={algorithm!r}", f"meta.remat={remat}", "meta.tasks=1",
                          "train.adam_eps_root=1e-16"])
    network, vgg = perceptual_features("lpips_vgg16")
    trainer = MetaTrainer(config, network)
    state = jax.jit(trainer.init_state)(jax.random.key(0), {"params": vgg})
    size = config.model.image_size

    def pairs(count: int) -> dict:
        inputs = dummy_batch(config.model, count)
        rng = np.random.default_rng(0)
        batch = {k: np.asarray(v) + rng.uniform(0, 0.1, v.shape).astype(np.float32) for k, v in inputs.items()}
        batch.update(driving=rng.uniform(size=(count, size, size, 3)).astype(np.float32),
                     eye_mask=np.ones((count, size, size, 1), np.float32))
        return {k: v[None] for k, v in batch.items()}

    tasks = {"support": pairs(config.meta.support), "query": pairs(config.meta.query)}
    step = jax.jit(trainer.step, donate_argnums=0)
    tic = time.perf_counter()
    compiled = step.lower(state, tasks).compile()
    compile_seconds = time.perf_counter() - tic
    memory = compiled.memory_analysis()
    times = []
    for _ in range(repeats + 1):
        tic = time.perf_counter()
        state, metrics = compiled(state, tasks)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - tic)
    return {"variant": variant, "algorithm": algorithm, "remat": remat, "seconds_per_meta_step": min(times[1:]),
            "compile_seconds": compile_seconds,
            "xla_temp_gib": getattr(memory, "temp_size_in_bytes", 0) / 2 ** 30,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="tiny,official_256")
    parser.add_argument("--algorithms", default="reptile,fomaml,maml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # variant:algorithm:remat, run in a child process
    args = parser.parse_args()
    if args.one:
        variant, algorithm, remat = args.one.split(":")
        print(json.dumps(measure(variant, algorithm, remat == "True", args.repeats)))
        return
    print("| variant | algorithm | remat | s / meta-step | compile s | XLA temp GiB | peak RSS GiB |")
    print("|---|---|---|---:|---:|---:|---:|")
    for variant in args.variants.split(","):
        for algorithm in args.algorithms.split(","):
            for remat in ([True, False] if algorithm == "maml" else [False]):
                out = subprocess.run([sys.executable, __file__, "--one", f"{variant}:{algorithm}:{remat}",
                                      "--repeats", str(args.repeats)], capture_output=True, text=True)
                if out.returncode:
                    print(f"| {variant} | {algorithm} | {remat} | failed: {out.stderr.strip().splitlines()[-1]} |")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {variant} | {algorithm} | {remat} | {r['seconds_per_meta_step']:.3f} | "
                      f"{r['compile_seconds']:.1f} | {r['xla_temp_gib']:.2f} | {r['peak_rss_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
