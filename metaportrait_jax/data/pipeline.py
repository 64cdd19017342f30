"""Input pipelines on grain: pairs, episodes and clips from any frame source, deterministic and resumable.

Every example is a pure function of (seed, global example index): sampling draws from
`np.random.default_rng([seed, stream, index])`, and epochs are seeded permutations. So

- a resumed iterator (grain state `{"next_index": n}`, saved with checkpoints) yields exactly the batches an
  uninterrupted one would;
- process p of P reads only rows [p·b, (p+1)·b) of every global batch (b = global batch / P): the processes see
  disjoint data and, over an epoch, all of it;
- batches become global `jax.Array`s on the mesh with `train.sharding.global_batch`.

Kinds:
    pairs     source and driving frame of one clip; each epoch visits every driving frame once in a seeded order.
              The source is the clip's designated source frame (`source="clip"`, as the official pretraining) or a
              random frame of the clip (`source="random"`).
    episodes  per person: a support set of pairs from one clip and a query set from another clip of the same person,
              both driven from the support clip's source (adapt on one clip, judge on another); each epoch visits
              every person once. `episode_sampling="official"` reproduces `PersonalMetaDataset.get_set` (spec §4.2).
    clips     T consecutive frames of one clip (temporal super-resolution; with `targets` when the source has
              high-resolution frames); each epoch visits every window once.
"""

import dataclasses
import functools

import grain
import jax
import numpy as np

from metaportrait_jax.data.official_layout import DataError
from metaportrait_jax.data.sources import ClipTable, FrameSource
from metaportrait_jax.ops.rasterize import landmark_line_image
from metaportrait_jax.ops.topology import Topology, eye_mask, gaze_points, landmark_subset, mouth_mask

KINDS = ("pairs", "episodes", "clips")
_STREAM = {"pairs": 1, "episodes": 2, "clips": 3}
_UNBOUNDED = 2 ** 62  # examples in a stream: training draws from it for as many steps as it runs


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    kind: str = "pairs"
    global_batch: int = 8
    seed: int = 0
    source: str = "clip"                 # pairs: "clip" | "random"
    support: int = 4                     # episodes: pairs in the support set
    query: int = 4                       # episodes: pairs in the query set
    episode_sampling: str = "clips"      # episodes: "clips" (support / query from different clips) | "official"
    clip_length: int = 3                 # clips: frames per window
    workers: int = 2                     # threads that build examples

    def __post_init__(self):
        choices = {"kind": KINDS, "source": ("clip", "random"), "episode_sampling": ("clips", "official")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"pipeline {field} must be one of {allowed}, got {getattr(self, field)!r}")
        for field in ("global_batch", "support", "query", "clip_length", "workers"):
            if getattr(self, field) < 1:
                raise ValueError(f"pipeline {field} must be positive, got {getattr(self, field)}")


def pair_example(source: dict[str, np.ndarray], driving: dict[str, np.ndarray], identity: np.ndarray,
                 topology: Topology) -> dict[str, np.ndarray]:
    """Two frame records -> one generator example (NHWC float32, no batch axis).

    Keys: the generator inputs `source` [H,W,3] in [0,1], `source_line`, `driving_line` [H,W,3], `mouth_mask`
    [H,W,1], `driving_gaze` [G,2], `source_id` [D]; and for the losses `driving` [H,W,3], `eye_mask` [H,W,1],
    `source_landmarks`, `driving_landmarks` [S,2] (the topology's subset in [-1, 1]). Samplers add the record
    indices `source_record` and `driving_record` (int32) for bookkeeping.
    """
    size = source["image"].shape[0]
    driving_subset = landmark_subset(driving["landmarks"], topology)
    return {
        "source": source["image"].astype(np.float32) / 255,
        "driving": driving["image"].astype(np.float32) / 255,
        "source_line": landmark_line_image(source["landmarks"], topology, size),
        "driving_line": landmark_line_image(driving["landmarks"], topology, size),
        "mouth_mask": mouth_mask(driving_subset, topology, size, size),
        "eye_mask": eye_mask(driving_subset, topology, size, size),
        "driving_gaze": gaze_points(driving_subset, topology),
        "source_id": np.asarray(identity, np.float32),
        "source_landmarks": landmark_subset(source["landmarks"], topology),
        "driving_landmarks": driving_subset,
    }


def _stack(examples: list[dict]) -> dict:
    """Examples (nested dicts of arrays) -> one dict with a new leading axis on every array."""
    return jax.tree.map(lambda *leaves: np.stack(leaves), *examples)


@functools.lru_cache(maxsize=8)
def _epoch_order(seed: int, stream: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, stream, epoch, size]).permutation(size)


def _visit(seed: int, stream: int, index: int, size: int) -> int:
    """The item that global example `index` visits: epochs are seeded permutations of `range(size)`."""
    return int(_epoch_order(seed, stream, index // size, size)[index % size])


class ExampleSampler:
    """Global example index -> example, for one frame source and spec (picklable, thread-safe, pure)."""

    def __init__(self, frames: FrameSource, spec: PipelineSpec):
        self.frames, self.spec, self.clips = frames, spec, frames.clips
        clips = self.clips
        self.persons = clips.persons()
        if spec.kind == "clips":
            windows = [(c, s) for c in range(clips.num_clips) for s in range(int(clips.length[c]) - spec.clip_length + 1)]
            if not windows:
                raise DataError(f"no clip has {spec.clip_length} frames (longest: {int(np.max(clips.length))})")
            self.windows = np.asarray(windows, np.int64)
        self.size = {"pairs": clips.num_frames, "episodes": len(self.persons),
                     "clips": len(getattr(self, "windows", ()))}[spec.kind]
        # per-frame class list of the official sampler (one entry per driving frame, value = person)
        self.frame_person = np.repeat(clips.person, clips.length)

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.spec.seed, _STREAM[self.spec.kind], index])
        item = _visit(self.spec.seed, _STREAM[self.spec.kind], index, self.size)
        return {"pairs": self._pair, "episodes": self._episode, "clips": self._clip}[self.spec.kind](item, rng, index)

    def _record(self, index: int) -> dict[str, np.ndarray]:
        return self.frames[int(index)]

    def _pair_from(self, source_record: int, driving_record: int) -> dict[str, np.ndarray]:
        source = self._record(source_record)
        example = pair_example(source, self._record(driving_record), source["identity"], self.frames.topology)
        return dict(example, source_record=np.int32(source_record), driving_record=np.int32(driving_record))

    def _random_frame(self, clip: int, rng: np.random.Generator, count: int | None = None) -> np.ndarray | int:
        clips = self.clips
        offsets = rng.integers(0, clips.length[clip], size=count)
        return clips.start[clip] + offsets

    def _pair(self, frame: int, rng: np.random.Generator, index: int) -> dict[str, np.ndarray]:
        driving, clip = self.clips.driving_record(frame)
        source = self.clips.source[clip] if self.spec.source == "clip" else self._random_frame(clip, rng)
        return self._pair_from(source, driving)

    def _episode(self, person_slot: int, rng: np.random.Generator, index: int) -> dict[str, np.ndarray]:
        spec, clips = self.spec, self.clips
        if spec.episode_sampling == "official":
            return self._official_episode(index)
        person = self.persons[person_slot]
        own = clips.clips_of(person)
        support_clip = int(rng.choice(own))
        others = own[own != support_clip]
        # A person with a single clip is judged on the same clip's other frames (pairs drawn independently).
        query_clip = int(rng.choice(others)) if len(others) else support_clip
        source = clips.source[support_clip]
        support = [self._pair_from(source, d) for d in self._random_frame(support_clip, rng, spec.support)]
        query = [self._pair_from(source, d) for d in self._random_frame(query_clip, rng, spec.query)]
        return {"support": _stack(support), "query": _stack(query), "person": np.int32(person)}

    def _official_episode(self, index: int) -> dict[str, np.ndarray]:
        """`PersonalMetaDataset.get_set` for one class: RandomState(365 + idx); class drawn from the per-frame class
        list; S + T + 1 frames with replacement, the last one the source; support = first S, query = next T."""
        spec, clips = self.spec, self.clips
        rng = np.random.RandomState(365 + index % max(1, clips.num_frames))
        person = int(rng.choice(self.frame_person, size=1, replace=False)[0])
        own = clips.clips_of(person)
        records = np.concatenate([np.arange(clips.start[c], clips.start[c] + clips.length[c]) for c in own])
        chosen = records[rng.randint(0, len(records), size=spec.support + spec.query + 1)]
        source = chosen[-1]
        support = [self._pair_from(source, d) for d in chosen[:spec.support]]
        query = [self._pair_from(source, d) for d in chosen[spec.support:-1]]
        return {"support": _stack(support), "query": _stack(query), "person": np.int32(person)}

    def _clip(self, window: int, rng: np.random.Generator, index: int) -> dict[str, np.ndarray]:
        clip, start = self.windows[window]
        first = self.clips.start[clip] + start
        records = [self._record(r) for r in range(first, first + self.spec.clip_length)]
        out = {"first_record": np.int32(first),
               "frames": np.stack([r["image"] for r in records]).astype(np.float32) / 255,
               "landmarks": np.stack([r["landmarks"] for r in records]),
               "visibility": np.stack([r["visibility"] for r in records])}
        if "flow" in records[0]:
            out["flow"] = np.stack([r["flow"] for r in records])
        if "image_hr" in records[0]:  # SR targets: the same frames at a higher resolution
            out["targets"] = np.stack([r["image_hr"] for r in records]).astype(np.float32) / 255
        return out


def local_batch_size(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} must be divisible by the process count {process_count}")
    return global_batch // process_count


def make_dataset(frames: FrameSource, spec: PipelineSpec, process_index: int = 0,
                 process_count: int = 1) -> grain.MapDataset:
    """This process's batches: `dataset[step]` is its share (rows [p·b, (p+1)·b)) of global batch `step`."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process index {process_index} outside [0, {process_count})")
    local = local_batch_size(spec.global_batch, process_count)
    sampler = ExampleSampler(frames, spec)
    if sampler.size == 0:
        raise DataError(f"the frame source has nothing to draw {spec.kind} from")

    def global_index(j: int) -> int:
        return (j // local) * spec.global_batch + process_index * local + j % local

    return grain.MapDataset.range(_UNBOUNDED).map(global_index).map(sampler).batch(local, batch_fn=_stack)


def make_iterator(dataset: grain.MapDataset, spec: PipelineSpec, state: dict | None = None):
    """A grain iterator over `dataset` with `spec.workers` threads; `state` from `iterator.get_state()` resumes it."""
    iterator = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=spec.workers,
                                                              prefetch_buffer_size=2 * spec.workers)))
    if state is not None:
        iterator.set_state(state)
    return iterator


def epoch_size(frames: FrameSource, spec: PipelineSpec) -> int:
    """Examples in one epoch of `spec.kind` (driving frames, persons or windows)."""
    return ExampleSampler(frames, spec).size

