"""Compile and run seconds of a tiny full-stage start state (`Trainer.init_state`): plain `jax.jit` against
`train.start.jit_init` (no XLA backend optimisations on CPU), in one process, with whether the two give the same bits.

  python benchmarks/init_compile.py [--config configs/pretrain_full.py:tiny]
"""

import argparse
import json
import os
import platform
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                    platform.processor())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "pretrain_full.py:tiny"))
    args = parser.parse_args()
    import jax
    import numpy as np

    from metaportrait_jax.config import load_config
    from metaportrait_jax.convert.vgg import perceptual_features
    from metaportrait_jax.train.start import jit_init
    from metaportrait_jax.train.step import Trainer

    config = load_config(args.config)
    network, vgg = perceptual_features(config.train.perceptual)
    trainer = Trainer(config, network)
    results, states = {}, {}
    for name, jit in (("jax.jit", jax.jit), ("jit_init", jit_init)):
        tic = time.perf_counter()
        compiled = jit(trainer.init_state).lower(jax.random.key(0), {"params": vgg}).compile()
        compiled_at = time.perf_counter()
        states[name] = jax.block_until_ready(compiled(jax.random.key(0), {"params": vgg}))
        results[name] = {"compile_seconds": compiled_at - tic, "run_seconds": time.perf_counter() - compiled_at}
    same = all(np.array_equal(a, b) for a, b in zip(*(jax.tree.leaves(s) for s in states.values())))
    print(json.dumps({"cpu": cpu_name(), "config": args.config, **results, "same_bits": same,
                      "compile_ratio": results["jit_init"]["compile_seconds"] / results["jax.jit"]["compile_seconds"]}))


if __name__ == "__main__":
    main()
