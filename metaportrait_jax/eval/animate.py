"""Animation: self-reconstruction on official-layout folders (`animate --official-data`) and cross-clip
reenactment on any frame source (one source frame driven by another clip's frames)."""

import os

import imageio.v2 as imageio
import jax
import numpy as np
from tqdm import tqdm

from metaportrait_jax.data.official_layout import OfficialLayout
from metaportrait_jax.data.pipeline import pair_example
from metaportrait_jax.data.sources import FrameSource
from metaportrait_jax.eval.video import to_uint8, write_mp4
from metaportrait_jax.models.generator import BATCH_KEYS, Generator
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
    forward = generator_forward(model)
    written = []
    with tqdm(total=len(layout), desc="animate", unit="frame") as bar:
        for names, batch, valid in layout.iterate_batches(batch_size):
            frames = to_uint8(forward(variables, batch)["prediction"][:valid])
            for name, frame in zip(names, frames):
                imageio.imwrite(os.path.join(output_dir, name), frame)
                written.append(name)
            bar.update(valid)
    video = os.path.join(output_dir, f"out_{model.image_size}.mp4")
    fps = config.get("inference", {}).get("fps", 23.98)
    write_mp4(video, (imageio.imread(os.path.join(output_dir, n)) for n in sorted(written)), fps)
    return video


def generator_forward(model_config):
    """The jitted generator forward `(variables, batch) -> outputs`; build it once and reuse it across calls."""
    return jax.jit(lambda v, b: Generator(model_config).apply(v, b))


def animate_frames(forward, variables, frames: FrameSource, source_record: int, driving_records,
                   batch_size: int = 8) -> dict[str, np.ndarray]:
    """Drives frame `source_record` with each of `driving_records`, all records of `frames`; `forward` comes from
    `generator_forward` (one compiled shape: the last batch is padded).

    Returns uint8 `[T, H, W, 3]` arrays: `prediction`, `deformed` (the warped source) and `driving` (the ground
    truth when source and driving frames show the same person).
    """
    source = frames[int(source_record)]
    examples = [pair_example(source, frames[int(r)], source["identity"], frames.topology) for r in driving_records]
    outputs = {"prediction": [], "deformed": [], "driving": []}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        valid = len(chunk)
        chunk += [chunk[-1]] * (batch_size - valid)  # one compiled shape
        batch = {k: np.stack([e[k] for e in chunk]) for k in (*BATCH_KEYS, "driving")}
        out = forward(variables, {k: batch[k] for k in BATCH_KEYS})
        for key, value in (("prediction", out["prediction"]), ("deformed", out["deformed"]),
                           ("driving", batch["driving"])):
            outputs[key].append(to_uint8(np.asarray(value)[:valid]))
    return {k: np.concatenate(v) for k, v in outputs.items()}
