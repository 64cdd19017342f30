"""`animate --official-data`: self-reconstruction on data in the official inference layout."""

import os

import imageio.v2 as imageio
import jax
import numpy as np
from tqdm import tqdm

from metaportrait_jax.data.official_layout import OfficialLayout
from metaportrait_jax.eval.video import to_uint8, write_mp4
from metaportrait_jax.models.generator import Generator
from metaportrait_jax.ops.topology import get_topology
from metaportrait_jax.train.checkpoint import load_model


def animate_official(checkpoint_dir: str, data_dir: str, output_dir: str, batch_size: int | None = None) -> str:
    """Writes `OUT/<driving file name>` (PNG) for every frame and `OUT/out_<size>.mp4`; returns the mp4 path.

    The forward is compiled once (the last batch is padded); weights are passed as arguments, not closed over.
    """
    config, variables, _ = load_model(checkpoint_dir)
    model = config.model
    layout = OfficialLayout.open(data_dir, get_topology(model.topology), model.image_size, model.id_dim)
    batch_size = batch_size or config.get("inference", {}).get("batch_size", 1)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    os.makedirs(output_dir, exist_ok=True)
    forward = jax.jit(lambda v, b: Generator(model).apply(v, b)["prediction"])
    written = []
    with tqdm(total=len(layout), desc="animate", unit="frame") as bar:
        for names, batch, valid in layout.iterate_batches(batch_size):
            frames = to_uint8(forward(variables, batch)[:valid])
            for name, frame in zip(names, frames):
                imageio.imwrite(os.path.join(output_dir, name), frame)
                written.append(name)
            bar.update(valid)
    video = os.path.join(output_dir, f"out_{model.image_size}.mp4")
    fps = config.get("inference", {}).get("fps", 23.98)
    write_mp4(video, (imageio.imread(os.path.join(output_dir, n)) for n in sorted(written)), fps)
    return video
