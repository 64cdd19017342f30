"""Random-access frame sources with one record schema, whatever the data set is stored in.

A source is a sequence of frame records plus a `ClipTable` saying which records form which clip of which person:

    record = {"image": uint8 [H, W, 3], "landmarks": float32 [N, 2] (x, y) in [0, 1], "visibility": uint8 [N],
              "identity": float32 [D]}   (+ "flow": float32 [H, W, 2] backward flow in pixels, synthetic data only)

Each clip's records are contiguous: first its designated source frame (`source` column; the official layout's
`src_<k>.png`, a synthetic clip's first frame), then its driving frames `start .. start + length - 1` in time order.
Sources are read through grain, so they implement `__len__` and `__getitem__` and nothing else is assumed.
"""

import dataclasses
import json
import os
from typing import Protocol

import numpy as np

from metaportrait_jax.data.official_layout import DataError, OfficialLayout, load_array, load_image
from metaportrait_jax.ops.topology import Topology, get_topology


@dataclasses.dataclass(frozen=True)
class ClipTable:
    """One row per clip; all int64 arrays of shape [C]."""
    person: np.ndarray   # identity index, shared by all clips of one person
    source: np.ndarray   # record index of the clip's designated source frame
    start: np.ndarray    # record index of the first driving frame
    length: np.ndarray   # number of driving frames

    def __post_init__(self):
        sizes = {len(self.person), len(self.source), len(self.start), len(self.length)}
        if len(sizes) != 1:
            raise ValueError(f"clip table columns differ in length: {sorted(sizes)}")
        if len(self.person) and np.min(self.length) < 1:
            raise ValueError("every clip needs at least one driving frame")

    @property
    def num_clips(self) -> int:
        return len(self.person)

    @property
    def num_frames(self) -> int:
        return int(np.sum(self.length))

    def persons(self) -> np.ndarray:
        """Sorted distinct person indices."""
        return np.unique(self.person)

    def clips_of(self, person: int) -> np.ndarray:
        return np.flatnonzero(self.person == person)

    def driving_record(self, frame: np.ndarray | int) -> np.ndarray:
        """Global driving-frame number(s) in [0, num_frames) -> (record index, clip index)."""
        ends = np.cumsum(self.length)
        clip = np.searchsorted(ends, frame, side="right")
        return self.start[clip] + frame - (ends[clip] - self.length[clip]), clip

    def to_json(self) -> dict:
        return {k: [int(v) for v in getattr(self, k)] for k in ("person", "source", "start", "length")}

    @classmethod
    def from_json(cls, data: dict) -> "ClipTable":
        return cls(**{k: np.asarray(data[k], np.int64) for k in ("person", "source", "start", "length")})


class FrameSource(Protocol):
    clips: ClipTable
    topology: Topology
    image_size: int
    id_dim: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...


def fit_problems(frames: FrameSource, model) -> list[str]:
    """What keeps a model config (`config.model`) from running on `frames`: e.g. ["image size 64 (model expects
    256)"]; empty when they fit."""
    return [f"{name} {have} (model expects {want})" for name, have, want in (
        ("image size", frames.image_size, model.image_size), ("identity size", frames.id_dim, model.id_dim),
        ("gaze points", frames.topology.num_gaze, model.num_gaze),
        ("landmark topology", frames.topology.name, model.topology)) if have != want]


class OfficialLayoutFrames:
    """An official-layout folder (spec §1.6) as a frame source: one clip per class key `k`, one person per clip."""

    def __init__(self, root: str, topology: Topology, image_size: int, id_dim: int):
        layout = OfficialLayout.open(root, topology, image_size, id_dim)
        self.topology, self.image_size, self.id_dim = topology, image_size, id_dim
        by_key: dict[str, list] = {}
        for frame in layout.frames:
            by_key.setdefault(frame.class_key, []).append(frame)
        self._records: list[tuple[str, str, str]] = []  # (image path, landmark path, class key)
        person, source, start, length = [], [], [], []
        for index, key in enumerate(sorted(by_key)):
            prefix = os.path.join(root, f"src_{key}")
            person.append(index)
            source.append(len(self._records))
            self._records.append((prefix + ".png", prefix + "_ldmk.npy", key))
            start.append(len(self._records))
            length.append(len(by_key[key]))
            self._records += [(f.image, f.landmarks, key) for f in by_key[key]]
        self.clips = ClipTable(*(np.asarray(c, np.int64) for c in (person, source, start, length)))
        self._identities = {key: load_array(os.path.join(root, f"src_{key}_id.npy"), ((1, id_dim), (id_dim,)),
                                            "identity embedding").reshape(id_dim) for key in by_key}

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        image, landmarks, key = self._records[index]
        points = load_array(landmarks, ((self.topology.num_points, 2),), f"landmarks ({self.topology.name})")
        return {"image": np.round(load_image(image, self.image_size) * 255).astype(np.uint8),
                "landmarks": points, "visibility": np.ones(self.topology.num_points, np.uint8),
                "identity": self._identities[key]}


METADATA_FILE = "frames.json"  # beside a TFDS dataset's own files: topology, image size, identity size, clip tables


class TfdsFrames:
    """One split of a frame data set built by `metaportrait_jax.data.datasets` (TFDS, array_record, no TensorFlow)."""

    def __init__(self, data_dir: str, split: str):
        import tensorflow_datasets as tfds

        meta_path = os.path.join(data_dir, METADATA_FILE)
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise DataError(f"{meta_path}: missing; is {data_dir} a data set built by `metaportrait-jax data`?") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{meta_path}: not valid JSON ({e})") from None
        if split not in meta["clips"]:
            raise DataError(f"{data_dir}: no split {split!r}; it has {', '.join(sorted(meta['clips']))}")
        self.topology = get_topology(meta["topology"])
        self.image_size, self.id_dim = int(meta["image_size"]), int(meta["id_dim"])
        self.clips = ClipTable.from_json(meta["clips"][split])
        self._source = tfds.builder_from_directory(data_dir).as_data_source(split=split)
        if len(self._source) != int(self.clips.start[-1] + self.clips.length[-1]):
            raise DataError(f"{data_dir}: split {split!r} has {len(self._source)} records but its clip table "
                            f"covers {int(self.clips.start[-1] + self.clips.length[-1])}")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = self._source[int(index)]
        return {k: v for k, v in record.items()
                if k in ("image", "landmarks", "visibility", "identity", "flow", "image_hr")}


class ClipSubset:
    """Some clips of a frame source as a frame source of their own (e.g. one person's first clip to personalise on).

    Record indices are renumbered; person indices are kept.
    """

    def __init__(self, frames: FrameSource, clips: list[int] | np.ndarray):
        table = frames.clips
        clips = [int(c) for c in clips]
        if not clips or not all(0 <= c < table.num_clips for c in clips):
            raise DataError(f"clip indices {clips} outside [0, {table.num_clips})")
        self.frames, self.topology = frames, frames.topology
        self.image_size, self.id_dim = frames.image_size, frames.id_dim
        self._records: list[int] = []
        source, start = [], []
        for c in clips:
            source.append(len(self._records))
            self._records.append(int(table.source[c]))
            start.append(len(self._records))
            self._records += range(int(table.start[c]), int(table.start[c] + table.length[c]))
        self.clips = ClipTable(table.person[clips], np.asarray(source, np.int64), np.asarray(start, np.int64),
                               table.length[clips])

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.frames[self._records[int(index)]]
