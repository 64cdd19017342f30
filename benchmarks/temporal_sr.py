"""Seconds per 512² output frame of the temporal SR network (official_512, fp32 forward), and achieved GFLOP/s.

  python benchmarks/temporal_sr.py                          # official_512: a 3-frame window and a 6-frame clip
  python benchmarks/temporal_sr.py --frames 6 --chunk 16    # + seamless long-video inference, 16 frames per step
  python benchmarks/temporal_sr.py --variant tiny --frames 3

GFLOP counts 2 FLOPs per multiply-accumulate of the convolutions and dense layers of the traced program (the
official network: about 840 GFLOP per frame). The official PyTorch network takes 26-31 s per 6-frame clip on this
machine class. Measure on an idle machine (`uptime`): other work on the same cores makes the numbers worthless.
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from metaportrait_jax.eval.enhance import chunk_forward
from metaportrait_jax.models.config import temporal_sr_config
from metaportrait_jax.models.summary import _macs_of_jaxpr
from metaportrait_jax.models.temporal_sr import TemporalSR, dummy_clip, init_variables, temporal_depth


def _time(fn, args, repeats: int) -> tuple[float, float]:
    """(first call incl. compile, median of `repeats` further calls), seconds."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="official_512")
    parser.add_argument("--frames", nargs="+", type=int, default=[3, 6], help="clip lengths (one clip per call)")
    parser.add_argument("--chunk", type=int, help="also time windowed inference with this many frames per step")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    config = temporal_sr_config(args.variant)
    variables = init_variables(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    print(f"{args.variant}: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, jax {jax.__version__}, fp32")
    print(f"{'what':<34}{'compile+run s':>14}{'s/frame':>9}{'GFLOP/frame':>12}{'GFLOP/s':>9}")
    network = TemporalSR(config)
    forward = jax.jit(network.apply)
    for frames in args.frames:
        clip = jnp.asarray(rng.uniform(size=dummy_clip(config, 1, frames).shape), jnp.float32)
        gflop = 2 * _macs_of_jaxpr(jax.make_jaxpr(network.apply)(variables, clip).jaxpr) / 1e9 / frames
        first, median = _time(forward, (variables, clip), args.repeats)
        print(f"{f'clip of {frames} frames':<34}{first:>14.1f}{median / frames:>9.2f}{gflop:>12.1f}"
              f"{gflop * frames / median:>9.1f}", flush=True)
    if args.chunk:
        margin = temporal_depth(config)
        span = args.chunk + 2 * margin
        stretch = jnp.asarray(rng.uniform(size=dummy_clip(config, 1, span).shape), jnp.float32)
        step = chunk_forward(config)
        call_args = (variables, stretch, jnp.int32(0), jnp.int32(span))
        traced = jax.make_jaxpr(lambda v, s: network.apply(v, s, margin=margin, valid=(0, span)))(variables, stretch)
        gflop = 2 * _macs_of_jaxpr(traced.jaxpr) / 1e9 / args.chunk
        first, median = _time(step, call_args, args.repeats)
        print(f"{f'windowed, {args.chunk} frames/step (±{margin})':<34}{first:>14.1f}{median / args.chunk:>9.2f}"
              f"{gflop:>12.1f}{gflop * args.chunk / median:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
