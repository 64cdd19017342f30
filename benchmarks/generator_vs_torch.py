"""Generator forward, ours (JAX) against the PyTorch rebuild of the official model, alternating runs in one process.

  python benchmarks/generator_vs_torch.py                    # official_256, batch 1, 5 rounds
  python benchmarks/generator_vs_torch.py --variant tiny --batch 8

Needs torch (`pip install -e '.[test]'`). Both run fp32 on the CPU with the same thread count; the torch side is
`tests/official_torch.py` (the official module tree, spectral norm in eval mode). Alternating the two cancels most of
the drift from other load on the machine, but measure on an idle machine anyway.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from metaportrait_jax.models.config import generator_config
from metaportrait_jax.models.generator import Generator, dummy_batch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from official_torch import OfficialGenerator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="official_256")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = generator_config(args.variant)
    size, batch_size = config.image_size, args.batch
    rng = np.random.default_rng(0)

    batch = {k: jnp.asarray(rng.uniform(size=v.shape), jnp.float32) for k, v in dummy_batch(config, batch_size).items()}
    model = Generator(config)
    variables = jax.jit(model.init)(jax.random.key(0), batch)
    forward = jax.jit(lambda v, b: model.apply(v, b)["prediction"])

    reference = OfficialGenerator(config.to_dict()).eval()
    nchw = {k: torch.from_numpy(np.asarray(v).transpose(0, 3, 1, 2).copy()) for k, v in batch.items() if v.ndim == 4}
    landmarks = torch.from_numpy(rng.uniform(-0.8, 0.8, (batch_size, 58, 2)).astype(np.float32))
    torch_args = (nchw["source"], nchw["source_line"], nchw["driving_line"], landmarks, nchw["mouth_mask"],
                  torch.from_numpy(np.array(batch["source_id"])))

    def run_jax():
        forward(variables, batch).block_until_ready()

    def run_torch():
        with torch.no_grad():
            reference(*torch_args)

    run_jax(), run_torch()  # compile / warm up
    times = {"jax": [], "torch": []}
    for _ in range(args.rounds):
        for name, run in (("jax", run_jax), ("torch", run_torch)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    print(f"{args.variant}, batch {batch_size}, {args.threads} threads, {args.rounds} alternating rounds "
          f"(jax {jax.__version__}, torch {torch.__version__})")
    medians = {name: statistics.median(t) / batch_size for name, t in times.items()}
    for name, per_frame in medians.items():
        print(f"  {name:<6} {per_frame:.3f} s/frame (median)")
    print(f"  torch / jax = {medians['torch'] / medians['jax']:.2f}")


if __name__ == "__main__":
    main()
