"""Seconds per frame and achieved GFLOP/s of the generator forward (eval mode), on whatever devices are present.

  python benchmarks/generator.py                       # official_256 and tiny, batch 1 and 8
  python benchmarks/generator.py --variants tiny --batches 1 --repeats 5

GFLOP/s counts 2 FLOPs per multiply-accumulate of the convolutions and dense layers (the summary's MAC count).
Measure on an idle machine: other heavy work on the same cores makes the numbers worthless.
"""

import argparse
import statistics
import time

import jax
import numpy as np

from metaportrait_jax.models.config import generator_config
from metaportrait_jax.models.generator import Generator, dummy_batch
from metaportrait_jax.models.summary import generator_macs


def time_forward(variant: str, batch_size: int, repeats: int) -> tuple[float, float, float]:
    """(compile seconds, median seconds per frame, GFLOP/s)."""
    config = generator_config(variant)
    model = Generator(config)
    rng = np.random.default_rng(0)
    batch = {k: jax.numpy.asarray(rng.uniform(size=v.shape), jax.numpy.float32)
             for k, v in dummy_batch(config, batch_size).items()}
    variables = jax.jit(model.init)(jax.random.key(0), batch)
    forward = jax.jit(lambda v, b: model.apply(v, b)["prediction"])
    start = time.perf_counter()
    forward(variables, batch).block_until_ready()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(variables, batch).block_until_ready()
        times.append(time.perf_counter() - start)
    per_frame = statistics.median(times) / batch_size
    return compile_s, per_frame, 2 * generator_macs(config) / per_frame / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=["official_256", "tiny"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    devices = jax.devices()
    print(f"devices: {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"{'variant':<14}{'batch':>6}{'compile s':>11}{'s/frame':>10}{'GFLOP/s':>9}")
    for variant in args.variants:
        for batch_size in args.batches:
            compile_s, per_frame, gflops = time_forward(variant, batch_size, args.repeats)
            print(f"{variant:<14}{batch_size:>6}{compile_s:>11.1f}{per_frame:>10.3f}{gflops:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
