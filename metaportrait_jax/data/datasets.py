"""TFDS builders (array_record files, `Tensor` features, no TensorFlow) for the frame record schema of `sources.py`.

    synthetic_talking_heads   procedurally rendered heads (`synthetic.py`), disjoint train / test identities,
                              every identity with several clips of different motion
    talking_head_videos       any official-layout folder, e.g. the output of `metaportrait-jax preprocess`

Records are frames in clip order (`disable_shuffling`), so a clip is a contiguous run of records; the clip tables,
topology and sizes go to `frames.json` beside the TFDS files. Read a built set with `sources.TfdsFrames(dir, split)`.
"""

import dataclasses
import hashlib
import json
import multiprocessing
import os

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from metaportrait_jax.data.official_layout import DataError
from metaportrait_jax.data.sources import (METADATA_FILE, ClipTable, FrameSource, OfficialLayoutFrames, TfdsFrames,
                                           fit_problems)
from metaportrait_jax.ops.topology import get_topology

SPLIT_CODES = {"train": 0, "test": 1}


@dataclasses.dataclass(frozen=True)
class SyntheticPlan:
    """What `synthetic_talking_heads` renders: the builder config fields."""
    image_size: int = 64
    train_identities: int = 32
    test_identities: int = 8
    clips_per_identity: int = 2
    frames_per_clip: int = 32
    id_dim: int = 64
    seed: int = 0
    target_scale: int = 1  # > 1: every record also holds `image_hr`, the same frame rendered this much larger (SR)

    def __post_init__(self):
        for field in ("image_size", "train_identities", "clips_per_identity", "frames_per_clip", "id_dim",
                      "target_scale"):
            if getattr(self, field) < 1:
                raise DataError(f"synthetic data: {field} must be positive, got {getattr(self, field)}")
        if self.clips_per_identity < 2:
            raise DataError(f"synthetic data: clips_per_identity must be >= 2 (adapt on one clip, judge on another), "
                             f"got {self.clips_per_identity}")

    def identities(self, split: str) -> int:
        return self.train_identities if split == "train" else self.test_identities

    def clip_table(self, split: str) -> ClipTable:
        clips = self.identities(split) * self.clips_per_identity
        start = np.arange(clips, dtype=np.int64) * self.frames_per_clip
        return ClipTable(person=np.arange(clips, dtype=np.int64) // self.clips_per_identity, source=start,
                         start=start, length=np.full(clips, self.frames_per_clip, np.int64))


# name -> plan; `r<size>` are the defaults per resolution, `_tiny` for tests, `_large` for longer studies. The
# identity size matches the model preset trained on each (tiny: 64, official_256: 256).
SYNTHETIC_CONFIGS = {
    "r64": SyntheticPlan(64),
    "r128": SyntheticPlan(128, train_identities=24, test_identities=8),
    "r256": SyntheticPlan(256, train_identities=16, test_identities=8, frames_per_clip=24, id_dim=256),
    "r64_tiny": SyntheticPlan(64, train_identities=4, test_identities=2, frames_per_clip=8),
    "r64_large": SyntheticPlan(64, train_identities=256, test_identities=32, clips_per_identity=3, frames_per_clip=48),
    "r256_large": SyntheticPlan(256, train_identities=128, test_identities=16, clips_per_identity=3, frames_per_clip=48,
                                id_dim=256),
    # temporal SR: input frames with 2x targets (tiny SR network: 32 -> 64; official: 256 -> 512)
    "r32_sr": SyntheticPlan(32, train_identities=32, test_identities=8, frames_per_clip=24, target_scale=2),
    "r32_sr_tiny": SyntheticPlan(32, train_identities=3, test_identities=1, frames_per_clip=8, target_scale=2),
    "r256_sr": SyntheticPlan(256, train_identities=16, test_identities=8, frames_per_clip=24, id_dim=256,
                             target_scale=2),
}


def _render_synthetic_clip(args: tuple[SyntheticPlan, str, int, int]) -> list[dict[str, np.ndarray]]:
    """All frame records of clip `clip` of identity `person` in `split` (a pure function of its arguments)."""
    from metaportrait_jax.data import synthetic

    plan, split, person, clip = args
    identity = synthetic.sample_identity(np.random.default_rng([plan.seed, SPLIT_CODES[split], person]))
    motion = synthetic.sample_motion(np.random.default_rng([plan.seed, SPLIT_CODES[split], person, clip + 1]),
                                     plan.frames_per_clip)
    out = synthetic.render_clip(identity, motion, plan.image_size)
    vector = synthetic.identity_vector(identity, plan.id_dim)
    records = [{"image": out["image"][t], "landmarks": out["landmarks"][t].astype(np.float32),
                "visibility": out["visibility"][t].astype(np.uint8), "flow": out["flow"][t].astype(np.float32),
                "identity": vector} for t in range(plan.frames_per_clip)]
    if plan.target_scale > 1:  # the renderer is resolution-free: the same scene, sampled on a finer pixel grid
        large = synthetic.render_clip(identity, motion, plan.target_scale * plan.image_size)["image"]
        for record, image in zip(records, large):
            record["image_hr"] = image
    return records


def _frame_features(size: int, num_points: int, id_dim: int, with_flow: bool,
                    target_scale: int = 1) -> tfds.features.FeaturesDict:
    zlib = tfds.features.Encoding.ZLIB
    features = {
        "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8, encoding=zlib),
        "landmarks": tfds.features.Tensor(shape=(num_points, 2), dtype=np.float32),
        "visibility": tfds.features.Tensor(shape=(num_points,), dtype=np.uint8),
        "identity": tfds.features.Tensor(shape=(id_dim,), dtype=np.float32),
    }
    if target_scale > 1:
        large = target_scale * size
        features["image_hr"] = tfds.features.Tensor(shape=(large, large, 3), dtype=np.uint8, encoding=zlib)
    if with_flow:
        features["flow"] = tfds.features.Tensor(shape=(size, size, 2), dtype=np.float32, encoding=zlib)
    return tfds.features.FeaturesDict(features)


def _write_metadata(data_dir: str, topology: str, image_size: int, id_dim: int, tables: dict[str, ClipTable],
                    extra: dict) -> None:
    meta = {"topology": topology, "image_size": image_size, "id_dim": id_dim,
            "clips": {split: table.to_json() for split, table in tables.items()}, **extra}
    with open(os.path.join(data_dir, METADATA_FILE), "w") as f:
        json.dump(meta, f, indent=1)


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    plan: SyntheticPlan = SyntheticPlan()


class SyntheticTalkingHeads(tfds.core.GeneratorBasedBuilder):
    """Procedural 3-D talking heads; see `synthetic.py` for what identities and motions hold."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [SyntheticConfig(name=name, description=str(plan), plan=plan)
                       for name, plan in SYNTHETIC_CONFIGS.items()]
    workers = os.cpu_count() or 1

    def _info(self) -> tfds.core.DatasetInfo:
        from metaportrait_jax.data.synthetic import NUM_LANDMARKS

        plan = self.builder_config.plan
        return tfds.core.DatasetInfo(
            builder=self, description="Procedural 3-D talking heads (metaportrait-jax)", disable_shuffling=True,
            features=_frame_features(plan.image_size, NUM_LANDMARKS, plan.id_dim, True, plan.target_scale))

    def _split_generators(self, dl_manager):
        plan = self.builder_config.plan
        return {split: self._generate_examples(split) for split in SPLIT_CODES if plan.identities(split)}

    def _generate_examples(self, split: str):
        plan = self.builder_config.plan
        jobs = [(plan, split, person, clip) for person in range(plan.identities(split))
                for clip in range(plan.clips_per_identity)]
        # Rendering is the whole cost and clips are independent: render them in parallel, keep the order.
        with multiprocessing.get_context("spawn").Pool(self.workers) as pool:
            index = 0
            for records in pool.imap(_render_synthetic_clip, jobs):
                for record in records:
                    yield index, record
                    index += 1


def build_synthetic(data_dir: str, config: str | SyntheticPlan = "r64") -> str:
    """Builds `synthetic_talking_heads/<config>` under `data_dir`; returns the directory to read from.

    `config` is a name from `SYNTHETIC_CONFIGS` or a `SyntheticPlan` (built as config `custom_<hash>`). Building a
    data set that is already complete is a no-op.
    """
    if isinstance(config, SyntheticPlan):
        plan = config
        digest = hashlib.sha1(json.dumps(dataclasses.asdict(plan), sort_keys=True).encode()).hexdigest()[:10]
        config = SyntheticConfig(name=f"custom_{digest}", description=str(plan), plan=plan)
    elif config not in SYNTHETIC_CONFIGS:
        raise DataError(f"unknown synthetic data config {config!r}; available: {', '.join(SYNTHETIC_CONFIGS)}")
    else:
        plan = SYNTHETIC_CONFIGS[config]
    builder = SyntheticTalkingHeads(data_dir=data_dir, config=config, file_format="array_record")
    builder.download_and_prepare()
    tables = {split: plan.clip_table(split) for split in SPLIT_CODES if plan.identities(split)}
    _write_metadata(builder.data_dir, "synthetic", plan.image_size, plan.id_dim, tables,
                    {"plan": dataclasses.asdict(plan)})
    return builder.data_dir


@dataclasses.dataclass
class VideosConfig(tfds.core.BuilderConfig):
    root: str = ""
    topology: str = "mediapipe478"
    image_size: int = 256
    id_dim: int = 128
    test_persons: int = 0


class TalkingHeadVideos(tfds.core.GeneratorBasedBuilder):
    """Frames of an official-layout folder (e.g. `metaportrait-jax preprocess` output); one clip per class key."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, config: VideosConfig, **kwargs):
        super().__init__(config=config, **kwargs)
        c = config
        self.frames = OfficialLayoutFrames(c.root, get_topology(c.topology), c.image_size, c.id_dim)
        clips = self.frames.clips.num_clips
        if not 0 <= c.test_persons < clips:
            raise DataError(f"test_persons must be in [0, {clips}) for {c.root}, got {c.test_persons}")
        self.split_of_clip = np.where(np.arange(clips) >= clips - c.test_persons, "test", "train")

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self, description=f"Talking-head frames from {os.path.abspath(c.root)}", disable_shuffling=True,
            features=_frame_features(c.image_size, get_topology(c.topology).num_points, c.id_dim, False))

    def splits(self) -> list[str]:
        return sorted(set(self.split_of_clip.tolist()), key=list(SPLIT_CODES).index)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in self.splits()}

    def _generate_examples(self, split: str):
        clips, index = self.frames.clips, 0
        for c in np.flatnonzero(self.split_of_clip == split):
            for record in [clips.source[c], *range(clips.start[c], clips.start[c] + clips.length[c])]:
                yield index, self.frames[int(record)]
                index += 1

    def clip_table(self, split: str) -> ClipTable:
        """The split's clips after re-numbering: each clip's source record followed by its driving frames."""
        chosen = np.flatnonzero(self.split_of_clip == split)
        length = self.frames.clips.length[chosen]
        source = np.concatenate([[0], np.cumsum(length + 1)[:-1]]).astype(np.int64)
        return ClipTable(person=np.arange(len(chosen), dtype=np.int64), source=source, start=source + 1,
                         length=length)


def build_from_official_layout(root: str, data_dir: str, topology: str = "mediapipe478", image_size: int = 256,
                               id_dim: int = 128, test_persons: int = 0) -> str:
    """Builds `talking_head_videos/<folder name>` under `data_dir`; the last `test_persons` clips become `test`."""
    name = "".join(ch if ch.isalnum() else "_" for ch in os.path.basename(os.path.abspath(root))).lower() or "videos"
    config = VideosConfig(name=name, root=root, topology=topology, image_size=image_size, id_dim=id_dim,
                          test_persons=test_persons)
    builder = TalkingHeadVideos(data_dir=data_dir, config=config, file_format="array_record")
    builder.download_and_prepare()
    _write_metadata(builder.data_dir, topology, image_size, id_dim,
                    {s: builder.clip_table(s) for s in builder.splits()}, {"source_folder": os.path.abspath(root)})
    return builder.data_dir


def open_frames(data: ml_collections.ConfigDict, model: ml_collections.ConfigDict | None) -> FrameSource:
    """The frame source a config's `data` section names (building the synthetic set on first use); with a `model`,
    checked to fit it (`model` also gives an official-layout folder's topology and sizes)."""
    if data.source == "synthetic":
        frames = TfdsFrames(build_synthetic(data.data_dir, data.synthetic), data.split)
    elif data.source == "tfds":
        frames = TfdsFrames(data.path, data.split)
    elif data.source == "layout":
        frames = OfficialLayoutFrames(data.path, get_topology(model.topology), model.image_size, model.id_dim)
    else:
        raise DataError(f"config.data.source must be synthetic, tfds or layout, got {data.source!r}")
    if model is None:
        return frames
    problems = fit_problems(frames, model)
    if problems:
        raise DataError(f"the data does not fit the model: {', '.join(problems)}; set --config.model.* to match")
    return frames
