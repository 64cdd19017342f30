"""Seconds per 512² output frame of the temporal SR network (official_512, fp32 forward), and achieved GFLOP/s.

  python benchmarks/temporal_sr.py                          # official_512: a 3-frame window and a 6-frame clip
  python benchmarks/temporal_sr.py --frames 6 --chunk 16    # + seamless long-video inference, 16 frames per step
  python benchmarks/temporal_sr.py --variant tiny --frames 3
  python benchmarks/temporal_sr.py --frames 6 --torch 3     # + the PyTorch rebuild, alternating, 3 rounds

GFLOP counts 2 FLOPs per multiply-accumulate of the convolutions and dense layers of the traced program (the
official network: about 840 GFLOP per frame). The official PyTorch network takes 26-31 s per 6-frame clip on this
machine class. Measure on an idle machine (`uptime`): other work on the same cores makes the numbers worthless;
`--torch` times the PyTorch rebuild of the official network (`tests/official_torch_sr.py`) on the same clip in
alternation with ours, whose ratio survives a shared machine better than either time.
"""

import argparse
import os
import statistics
import sys
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


def compare_with_torch(config, variables, forward, frames: int, rounds: int) -> None:
    """Ours and the PyTorch rebuild (with our weights) on one clip of `frames`, alternating; medians and ratio."""
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from official_torch_sr import OfficialTemporalSR

    from metaportrait_jax.convert.official_sr import flax_to_official

    reference = OfficialTemporalSR(config.to_dict()).eval()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in flax_to_official(variables).items()}, strict=False)
    clip = np.random.default_rng(1).uniform(size=dummy_clip(config, 1, frames).shape).astype(np.float32)
    clip_torch = torch.from_numpy(clip.transpose(0, 1, 4, 2, 3).copy())
    ours, theirs = [], []
    with torch.no_grad():
        for _ in range(rounds + 1):  # the first round compiles / warms up
            start = time.perf_counter()
            jax.block_until_ready(forward(variables, clip))
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            reference(clip_torch)
            theirs.append(time.perf_counter() - start)
    ours_s, theirs_s = statistics.median(ours[1:]) / frames, statistics.median(theirs[1:]) / frames
    print(f"{f'ours, alternating ({frames} frames)':<34}{'':>14}{ours_s:>9.2f}")
    print(f"{f'PyTorch rebuild ({frames} frames)':<34}{'':>14}{theirs_s:>9.2f}")
    print(f"ours / PyTorch: {ours_s / theirs_s:.2f} (load {os.getloadavg()[0]:.1f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="official_512")
    parser.add_argument("--frames", nargs="+", type=int, default=[3, 6], help="clip lengths (one clip per call)")
    parser.add_argument("--chunk", type=int, help="also time windowed inference with this many frames per step")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--torch", type=int, metavar="ROUNDS", help="also alternate with the PyTorch rebuild")
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
    if args.torch:
        compare_with_torch(config, variables, forward, args.frames[-1], args.torch)
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
