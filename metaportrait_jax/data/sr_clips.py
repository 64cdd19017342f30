"""Training clips for temporal super-resolution: `inputs [B, T, h, w, 3]` and `targets [B, T, 2h, 2w, 3]` in [0, 1].

Targets are the frame source's high-resolution frames (`image_hr`, e.g. the synthetic `*_sr` sets, rendered at twice
the size). Inputs (`config.data.input_source`):

- "render": the source's own low-resolution frames;
- "base_model": what the base model makes of them, as the official training pairs its data: each frame of the clip
  driven from the clip's source frame by a base model checkpoint, quantised to uint8 by truncation as the base
  model's PNGs are.
"""

from collections.abc import Callable

import grain
import ml_collections
import numpy as np

from metaportrait_jax.data.official_layout import DataError
from metaportrait_jax.data.pipeline import PipelineSpec, make_dataset, pair_example
from metaportrait_jax.data.sources import FrameSource
from metaportrait_jax.media.video import to_uint8
from metaportrait_jax.models.generator import BATCH_KEYS

INPUT_SOURCES = ("render", "base_model")


class BaseModelInputs:
    """Replaces a batch's input frames by the base model's reconstruction of them (one `render` call per clip)."""

    def __init__(self, frames: FrameSource, render: Callable[[dict[str, np.ndarray]], np.ndarray]):
        self.frames, self.render = frames, render

    def __call__(self, first_record: int, length: int) -> np.ndarray:
        clips = self.frames.clips
        clip = int(np.searchsorted(clips.start, first_record, side="right") - 1)
        source = self.frames[int(clips.source[clip])]
        examples = [pair_example(source, self.frames[r], source["identity"], self.frames.topology)
                    for r in range(first_record, first_record + length)]
        prediction = self.render({k: np.stack([e[k] for e in examples]) for k in BATCH_KEYS})
        return to_uint8(prediction).astype(np.float32) / 255


def sr_dataset(config: ml_collections.ConfigDict, frames: FrameSource, process_index: int = 0,
               process_count: int = 1, render: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None
               ) -> tuple[grain.MapDataset, PipelineSpec]:
    """This process's share of every global batch of training clips, and the pipeline spec (for `make_iterator`).

    `render` (needed with `data.input_source='base_model'`): the base model of `data.base_checkpoint`, mapping a
    batch of generator inputs (`BATCH_KEYS`) to its predictions `[N, H, W, 3]` in [0, 1]
    (`train.tasks.checkpoint_renderer`)."""
    data, train = config.data, config.train
    record = frames[0]
    if "image_hr" not in record:
        raise DataError("the data has no high-resolution frames to learn from; use a synthetic SR set (e.g. "
                        "data.synthetic=r32_sr or r256_sr)")
    if record["image"].shape[0] * 2 != config.model.out_size or record["image_hr"].shape[0] != config.model.out_size:
        raise DataError(f"the data's frames are {record['image'].shape[0]}² -> {record['image_hr'].shape[0]}², the "
                        f"model maps {config.model.out_size // 2}² -> {config.model.out_size}²")
    if data.input_source not in INPUT_SOURCES:
        raise DataError(f"data.input_source must be one of {INPUT_SOURCES}, got {data.input_source!r}")
    if data.input_source == "base_model" and not data.base_checkpoint:
        raise DataError("data.input_source='base_model' needs data.base_checkpoint (a base model checkpoint)")
    if data.input_source == "base_model" and render is None:
        raise TypeError("sr_dataset: data.input_source='base_model' needs the base model as `render`")
    base = BaseModelInputs(frames, render) if data.input_source == "base_model" else None
    spec = PipelineSpec("clips", train.batch_size, seed=config.seed, clip_length=train.clip_length,
                        workers=data.workers)

    def to_pairs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = batch["frames"] if base is None else np.stack(
            [base(int(first), train.clip_length) for first in batch["first_record"]])
        return {"inputs": inputs, "targets": batch["targets"]}

    dataset = make_dataset(frames, spec, process_index, process_count).map(to_pairs)
    return dataset, spec

