"""Input-pipeline throughput (examples/s) for pairs and episodes at 64² and 256², beside the training step it feeds.

  python benchmarks/input_pipeline.py                     # builds small synthetic sets under /tmp on first use
  python benchmarks/input_pipeline.py --sizes 64 --batches 20 --workers 1 2 4

The step rate is a generator forward + backward (L1 to the driving frame) at the matching model preset (`tiny` at
64², `official_256` at 256²): the pipeline keeps up when its examples/s exceed the step's. An episode counts as
support + query pairs. Measure on an idle machine.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from metaportrait_jax.data.datasets import SyntheticPlan, build_synthetic
from metaportrait_jax.data.pipeline import PipelineSpec, make_dataset, make_iterator
from metaportrait_jax.data.sources import TfdsFrames
from metaportrait_jax.models.config import generator_config
from metaportrait_jax.models.generator import BATCH_KEYS, Generator

PLANS = {64: SyntheticPlan(64, train_identities=8, test_identities=2, frames_per_clip=16, id_dim=32),
         256: SyntheticPlan(256, train_identities=4, test_identities=2, frames_per_clip=12, id_dim=256)}
PRESETS = {64: "tiny", 256: "official_256"}


def pipeline_rate(frames: TfdsFrames, spec: PipelineSpec, batches: int) -> float:
    """Examples (pairs) per second after the first batch."""
    iterator = make_iterator(make_dataset(frames, spec), spec)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    pairs = spec.global_batch * (spec.support + spec.query if spec.kind == "episodes" else 1)
    return batches * pairs / (time.perf_counter() - start)


def step_rate(size: int, frames: TfdsFrames, batch_size: int, repeats: int = 3) -> float:
    """Pairs per second of one generator forward + backward at the preset for `size`."""
    config = generator_config(PRESETS[size])
    config.id_dim = frames.id_dim
    model = Generator(config)
    spec = PipelineSpec("pairs", batch_size)
    example = next(make_iterator(make_dataset(frames, spec), spec))
    batch = {k: jnp.asarray(example[k]) for k in BATCH_KEYS}
    target = jnp.asarray(example["driving"])
    variables = jax.jit(model.init)(jax.random.key(0), batch)

    def l1_loss(params):
        prediction = model.apply({**variables, "params": params}, batch)["prediction"]
        return jnp.mean(jnp.abs(prediction - target))

    grads = jax.jit(jax.value_and_grad(l1_loss))

    jax.block_until_ready(grads(variables["params"]))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(grads(variables["params"]))
    return repeats * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 256], choices=sorted(PLANS))
    parser.add_argument("--data-dir", default="/tmp/metaportrait_bench_data")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--workers", nargs="+", type=int, default=[2])
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()}")
    print(f"{'size':>5} {'kind':<9} {'batch':>5} {'workers':>7} {'pipeline ex/s':>14} {'train step ex/s':>16}")
    for size in args.sizes:
        frames = TfdsFrames(build_synthetic(args.data_dir, PLANS[size]), "train")
        batch = 8 if size == 64 else 1
        consumed = step_rate(size, frames, batch)
        for kind in ("pairs", "episodes"):
            for workers in args.workers:
                spec = PipelineSpec(kind, batch, workers=workers)
                rate = pipeline_rate(frames, spec, args.batches)
                print(f"{size:>5} {kind:<9} {batch:>5} {workers:>7} {rate:>14.1f} {consumed:>16.2f}", flush=True)


if __name__ == "__main__":
    main()
