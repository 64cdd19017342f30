"""Time and peak memory of one meta-step (one task) per algorithm, at `tiny` and `official_256`.

  python benchmarks/meta_step.py [--variants tiny,official_256] [--algorithms reptile,fomaml,maml] [--repeats 3]
  python benchmarks/meta_step.py --variants tiny --algorithms reptile --unrolled true,false   # meta.unroll_inner_loop

Each (variant, algorithm) runs in its own process, so the peak resident memory (`ru_maxrss`) is that step's (compile
included); for a one-program step XLA's own estimate of its temporary buffers is printed beside it. Compile seconds
are the ahead-of-time compile's, or for composed programs the first call's time less a later call's. One task = the
variant's support and query sets (official_256: 1 support + 1 query pair; tiny: 4 + 4), 2 inner steps, random
weights, fp32. MAML runs one inner step per program
(`meta.maml_programs="per_inner_step"`); `--maml-programs per_inner_step,one` adds the one-program step (with
`meta.remat=True`), whose compile outgrows a 24 GB machine at `tiny`.

  python benchmarks/meta_step.py --maml-backward-memory official_256

compiles (only) MAML's largest program, the vector-Jacobian product of one inner step, ahead of time and prints XLA's
buffer estimate: what a MAML meta-step needs where running it does not fit.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_task_trainer(variant: str, algorithm: str, fields: dict | None = None):
    """(config, MetaTrainer, VGG variables) for one task of `variant` with `algorithm`; `fields` ({"a.b": value})
    set further config fields."""
    from metaportrait_jax.config import load_config
    from metaportrait_jax.convert.vgg import perceptual_features
    from metaportrait_jax.train.meta_step import MetaTrainer

    config = load_config(os.path.join(REPO, "configs", f"meta_train.py:{variant}"))
    config.update_from_flattened_dict({"meta.algorithm": algorithm, "meta.tasks": 1, "train.adam_eps_root": 1e-16,
                                       **(fields or {})})
    network, vgg = perceptual_features("lpips_vgg16")
    return config, MetaTrainer(config, network), {"params": vgg}


def measure(variant: str, algorithm: str, programs: str, repeats: int, unrolled: bool | None = None) -> dict:
    import jax
    import numpy as np

    from metaportrait_jax.models.generator import dummy_batch
    from metaportrait_jax.train.start import jit_init

    fields = {"meta.maml_programs": programs, "meta.remat": programs == "one"}
    if unrolled is not None:  # else the variant's own
        fields["meta.unroll_inner_loop"] = unrolled
    config, trainer, perceptual = one_task_trainer(variant, algorithm, fields)
    state = jit_init(trainer.init_state)(jax.random.key(0), perceptual)
    size = config.model.image_size

    def pairs(count: int) -> dict:
        inputs = dummy_batch(config.model, count)
        rng = np.random.default_rng(0)
        batch = {k: np.asarray(v) + rng.uniform(0, 0.1, v.shape).astype(np.float32) for k, v in inputs.items()}
        batch.update(driving=rng.uniform(size=(count, size, size, 3)).astype(np.float32),
                     eye_mask=np.ones((count, size, size, 1), np.float32))
        return {k: v[None] for k, v in batch.items()}

    tasks = {"support": pairs(config.meta.support), "query": pairs(config.meta.query)}
    step, memory, compile_seconds = trainer.compile_step(), None, 0.0
    if hasattr(step, "lower"):  # one program: compiled ahead, with XLA's memory estimate
        tic = time.perf_counter()
        step = step.lower(state, tasks).compile()
        compile_seconds, memory = time.perf_counter() - tic, step.memory_analysis()
    times = []
    for _ in range(repeats + 1):
        tic = time.perf_counter()
        state, metrics = step(state, tasks)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - tic)
    return {"variant": variant, "algorithm": algorithm, "programs": programs,
            "unrolled": config.meta.unroll_inner_loop, "support_loss": float(metrics["support_loss_after_inner"]),
            # composed programs compile at their first call
            "seconds_per_meta_step": min(times[1:]), "compile_seconds": compile_seconds + times[0] - min(times[1:]),
            "xla_temp_gib": memory.temp_size_in_bytes / 2 ** 30 if memory else float("nan"),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def maml_backward_memory(variant: str) -> dict:
    import jax
    import numpy as np

    from metaportrait_jax.meta.algorithms import float_leaves, inner_step_vjp
    from metaportrait_jax.models.generator import dummy_batch

    config, trainer, perceptual = one_task_trainer(variant, "maml")
    state = jax.eval_shape(trainer.init_state, jax.random.key(0), perceptual)
    size, count = config.model.image_size, config.meta.support
    support = dict(jax.eval_shape(lambda: dummy_batch(config.model, count)),
                   driving=jax.ShapeDtypeStruct((count, size, size, 3), np.float32),
                   eye_mask=jax.ShapeDtypeStruct((count, size, size, 1), np.float32))
    params = state.generator["params"]
    opt_state = jax.eval_shape(trainer.inner_tx.init, params)

    def backward(state, theta, opt_state, support, cotangent):
        return inner_step_vjp(lambda p, batch: trainer.task_loss(p, state, batch), trainer.inner_tx, theta,
                              opt_state, support, cotangent)

    tic = time.perf_counter()
    compiled = jax.jit(backward).lower(state, params, opt_state, support, (params, float_leaves(opt_state))).compile()
    memory = compiled.memory_analysis()
    return {"variant": variant, "compile_seconds": time.perf_counter() - tic,
            **{f"xla_{kind}_gib": getattr(memory, f"{kind}_size_in_bytes") / 2 ** 30
               for kind in ("argument", "output", "temp")},
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="tiny,official_256")
    parser.add_argument("--algorithms", default="reptile,fomaml,maml")
    parser.add_argument("--maml-programs", default="per_inner_step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--unrolled", default="", help="meta.unroll_inner_loop values to compare, e.g. true,false "
                                                        "(default: each variant's own)")
    parser.add_argument("--maml-backward-memory", metavar="VARIANT",
                        help="only compile MAML's VJP of one inner step at VARIANT and print XLA's buffer estimate")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # variant:algorithm:programs:unrolled, in a child process
    args = parser.parse_args()
    if args.maml_backward_memory:
        print(json.dumps(maml_backward_memory(args.maml_backward_memory)))
        return
    if args.one:
        variant, algorithm, programs, unrolled = args.one.split(":")
        print(json.dumps(measure(variant, algorithm, programs, args.repeats,
                                 None if unrolled == "" else unrolled == "true")))
        return
    print("| variant | algorithm | programs | inner loop unrolled | s / meta-step | compile s | support loss | "
          "XLA temp GiB | peak RSS GiB |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for variant in args.variants.split(","):
        for algorithm in args.algorithms.split(","):
            for programs in (args.maml_programs.split(",") if algorithm == "maml" else ["one"]):
                for unrolled in (args.unrolled.lower().split(",") if args.unrolled else [""]):
                    out = subprocess.run([sys.executable, __file__, "--one",
                                          f"{variant}:{algorithm}:{programs}:{unrolled}", "--repeats",
                                          str(args.repeats)], capture_output=True, text=True)
                    if out.returncode:
                        print(f"| {variant} | {algorithm} | {programs} | {unrolled} | failed: "
                              f"{out.stderr.strip().splitlines()[-1]} |")
                        continue
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    print(f"| {variant} | {algorithm} | {programs} | {r['unrolled']} | "
                          f"{r['seconds_per_meta_step']:.3f} | {r['compile_seconds']:.1f} | {r['support_loss']:.5f} | "
                          f"{r['xla_temp_gib']:.2f} | {r['peak_rss_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
