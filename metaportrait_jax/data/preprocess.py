"""Real videos -> the official inference layout, with public offline face tools (dlib and MediaPipe).

Inputs: a video (.mp4 .mov .avi .mkv), a folder of frame images (one clip), or a folder whose videos and frame
folders are one clip each. Per clip k (a sanitized file or folder name) the output root gets

    <k>/imgs/<frame>.png            [size, size, 3] face crops
    <k>/ldmks/<frame>_ldmk.npy      [478, 2] float32 MediaPipe landmarks (x, y) in [0, 1] of the crop
    <k>/thetas/<frame>_theta.npy    [2, 3] identity (the official code never reads it)
    src_<k>.png  src_<k>_ldmk.npy  src_<k>_theta.npy  src_<k>_id.npy ([1, 128] dlib descriptor): the first kept frame
    src_map_dict.pkl                {frame file name: k}
    preprocess_manifest.json        per clip: input, status, crop box, frames kept and without a face, topology

Frame names are `<clip number:04d>_<frame index:06d>.png`: unique across the root, and starting with a digit because
the official glob drops names starting with s, r, c or _.

Crop (the official recipe, one static square per clip): the dlib HOG face box (w, h) fixes side
min(min(W, H), int(1.3·max(w, h))) around the box centre moved up by 0.2·h, clamped inside the frame.

A video is decoded whole into memory before cropping (split very long videos); frame folders are read lazily.

Crash safety: a clip is written into a hidden staging folder and moved into place when complete, and every other
file goes to a temporary name first and is renamed, so an interruption leaves only complete files. A rerun skips
the clips the manifest marks done and redoes the others.
"""

import contextlib
import dataclasses
import importlib.util
import json
import os
import pickle
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from metaportrait_jax.data.official_layout import DataError, read_src_map
from metaportrait_jax.errors import UserError
from metaportrait_jax.media.video import read_video_frames

TOPOLOGY = "mediapipe478"
MANIFEST = "preprocess_manifest.json"
SRC_MAP = "src_map_dict.pkl"
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DETECTION_SAMPLES = 8     # frames per clip, evenly spaced, searched for the face that fixes the static crop
DETECTION_MAX_SIDE = 640  # HOG runs on frames shrunk to this long side: talking-head faces are large; 4x faster
INSTALL_HINT = ("preprocessing needs the optional tools: pip install -e '.[preprocess]' && "
                "pip install --no-deps mediapipe==0.10.21")

# What the ffmpeg reader raises for a missing, corrupt or truncated video.
_VIDEO_ERRORS = (OSError, RuntimeError, ValueError)
_IMAGE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


class MissingToolsError(UserError):
    """dlib, its model files or MediaPipe are not installed."""


@dataclasses.dataclass(frozen=True)
class Clip:
    key: str        # class key k: the clip's folder name under the output root
    path: str       # absolute path of a video file or of a folder of frame images
    is_video: bool


@dataclasses.dataclass
class PreprocessReport:
    clips_done: int = 0
    clips_already_done: int = 0   # skipped: done by an earlier run
    clips_without_face: int = 0
    frames_kept: int = 0
    frames_without_face: int = 0
    files_unreadable: int = 0     # videos and frame images that could not be decoded (or had another frame size)
    problems: list[str] = dataclasses.field(default_factory=list)


def format_report(report: PreprocessReport) -> str:
    rows = [("clips done", report.clips_done), ("clips already done", report.clips_already_done),
            ("clips without a face", report.clips_without_face), ("frames kept", report.frames_kept),
            ("frames without a face", report.frames_without_face), ("files unreadable", report.files_unreadable)]
    width = max(len(label) for label, _ in rows)
    digits = max(len(str(value)) for _, value in rows)
    return "\n".join(["preprocess report"] + [f"  {label:<{width}}  {value:>{digits}}" for label, value in rows])


def square_crop(face_box: Sequence[float], width: int, height: int) -> tuple[int, int, int]:
    """(left, top, side) in pixels of the official crop around a face box (left, top, right, bottom) in a W×H frame."""
    left, top, right, bottom = face_box
    box_w, box_h = right - left, bottom - top
    side = max(1, min(min(width, height), int(1.3 * max(box_w, box_h))))
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2 - 0.2 * box_h
    crop_left = min(max(0, round(centre_x - side / 2)), width - side)
    crop_top = min(max(0, round(centre_y - side / 2)), height - side)
    return crop_left, crop_top, side


def crop_and_resize(frame: np.ndarray, crop: tuple[int, int, int], size: int) -> np.ndarray:
    """`[H, W, 3]` uint8 -> `[size, size, 3]` uint8: INTER_AREA when shrinking, INTER_CUBIC when enlarging."""
    left, top, side = crop
    square = np.ascontiguousarray(frame[top:top + side, left:left + side])
    if side == size:
        return square
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_CUBIC)


def _image_files(folder: str) -> list[str]:
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


def _clip_name(path: str) -> str:
    """A folder-safe clip name: the file stem or folder name, other characters replaced by _."""
    stem = os.path.splitext(os.path.basename(path))[0] if os.path.isfile(path) else os.path.basename(path)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).lstrip(".") or "clip"


def find_clips(input_path: str, known_keys: Mapping[str, str] | None = None,
               exclude: str | None = None) -> list[Clip]:
    """The clips of `input_path`, in name order.

    `known_keys` {absolute input path: key} (from an earlier run's manifest) keeps each clip's key when inputs are
    added or removed; new clips get their sanitized name, suffixed -2, -3, ... on a clash. `exclude` is a folder to
    leave out (the output root, when it lies inside the input folder).
    """
    path = os.path.abspath(input_path)
    if not os.path.exists(path):
        raise DataError(f"{input_path}: does not exist")
    if os.path.isfile(path):
        if not path.lower().endswith(VIDEO_EXTENSIONS):
            raise DataError(f"{input_path}: not a video ({' '.join(VIDEO_EXTENSIONS)}) or a folder")
        sources = [(path, True)]
    elif _image_files(path):
        sources = [(path, False)]
    else:
        sources = []
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if name.startswith(".") or full == exclude:
                continue
            if os.path.isfile(full) and name.lower().endswith(VIDEO_EXTENSIONS):
                sources.append((full, True))
            elif os.path.isdir(full) and _image_files(full):
                sources.append((full, False))
        if not sources:
            raise DataError(f"{input_path}: no videos ({' '.join(VIDEO_EXTENSIONS)}) or folders of frame images "
                            f"({' '.join(IMAGE_EXTENSIONS)}) found")
    known = dict(known_keys or {})
    taken = set(known.values()) | {MANIFEST, SRC_MAP}
    clips = []
    for source, is_video in sources:
        key = known.get(source)
        if key is None:
            key = name = _clip_name(source)
            suffix = 2
            while key in taken:
                key, suffix = f"{name}-{suffix}", suffix + 1
            taken.add(key)
        clips.append(Clip(key, source, is_video))
    return clips


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """MediaPipe's native code prints benign notices (protobuf version, TFLite delegate, absl warnings) straight to
    file descriptor 2; keep them off the terminal. Python exceptions are unaffected."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class FaceTools:
    """dlib's HOG face detector, 68-point shape predictor and ResNet identity descriptor, loaded once per run, and a
    factory of MediaPipe face-mesh trackers."""

    def __init__(self):
        try:
            import dlib
            with _native_stderr_silenced():
                from mediapipe.python.solutions import face_mesh
        except (ImportError, TypeError) as e:  # TypeError: MediaPipe's generated code under an unsupported protobuf
            raise MissingToolsError(f"{INSTALL_HINT} ({e})") from None
        # Located without importing the package: its __init__ needs pkg_resources, which recent setuptools dropped.
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise MissingToolsError(f"{INSTALL_HINT} (face_recognition_models is not installed)")
        models = os.path.join(spec.submodule_search_locations[0], "models")
        self._face_mesh = face_mesh
        self._rectangle = dlib.rectangle
        self._detector = dlib.get_frontal_face_detector()
        self._shape_predictor = dlib.shape_predictor(os.path.join(models, "shape_predictor_68_face_landmarks.dat"))
        self._descriptor = dlib.face_recognition_model_v1(
            os.path.join(models, "dlib_face_recognition_resnet_model_v1.dat"))

    def detect(self, frame: np.ndarray, upsample: int = 1) -> np.ndarray | None:
        """`[H, W, 3]` uint8 RGB -> the best-scoring face box `[4]` (left, top, right, bottom) in pixels, or None."""
        height, width = frame.shape[:2]
        scale = min(1.0, DETECTION_MAX_SIDE / max(height, width))
        if scale < 1:
            frame = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                               interpolation=cv2.INTER_AREA)
        boxes, scores, _ = self._detector.run(np.ascontiguousarray(frame), upsample, 0.0)
        if not boxes:
            return None
        best = boxes[int(np.argmax(scores))]
        return np.asarray([best.left(), best.top(), best.right(), best.bottom()], np.float64) / scale

    def identity(self, crop: np.ndarray, fallback_box: np.ndarray) -> np.ndarray:
        """`[S, S, 3]` uint8 face crop -> `[1, 128]` float32 dlib descriptor.

        The face is re-detected in the crop (the shape predictor expects HOG-style boxes); `fallback_box` (left, top,
        right, bottom in crop pixels) stands in when HOG misses it.
        """
        box = self.detect(crop, upsample=0)
        box = fallback_box if box is None else box
        rectangle = self._rectangle(*(int(round(v)) for v in box))
        shape = self._shape_predictor(crop, rectangle)
        return np.asarray(self._descriptor.compute_face_descriptor(crop, shape), np.float32).reshape(1, 128)

    @contextlib.contextmanager
    def face_mesh(self, static: bool = False) -> Iterator[Callable[[np.ndarray], np.ndarray | None]]:
        """A fresh MediaPipe tracker (one per clip: it carries state from frame to frame) as a function
        `[S, S, 3]` uint8 RGB -> `[478, 2]` float32 (x, y) in [0, 1], or None without a face. `static` detects
        afresh in every image instead (independent frames, as metrics want)."""
        with _native_stderr_silenced(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # MediaPipe's own use of a deprecated protobuf API
            mesh = self._face_mesh.FaceMesh(static_image_mode=static, max_num_faces=1, refine_landmarks=True)

        def landmarks(crop: np.ndarray) -> np.ndarray | None:
            with _native_stderr_silenced():
                result = mesh.process(crop)
            if not result.multi_face_landmarks:
                return None
            return np.asarray([(p.x, p.y) for p in result.multi_face_landmarks[0].landmark], np.float32)

        try:
            yield landmarks
        finally:
            mesh.close()


class _ClipFrames:
    """A clip's frames `[H, W, 3]` uint8 RGB by index. A video is decoded whole on opening (raising on a corrupt
    file); frame images are read on access. An unreadable image, or one whose size differs from the clip's first
    readable frame, reads as None and is listed once in `unreadable`."""

    def __init__(self, clip: Clip):
        self._frames = read_video_frames(clip.path) if clip.is_video else None
        self._paths = None if clip.is_video else _image_files(clip.path)
        self._shape: tuple[int, ...] | None = None
        self.unreadable: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._frames) if self._frames is not None else len(self._paths)

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(W, H) of the first readable frame, None before one was read."""
        return None if self._shape is None else (self._shape[1], self._shape[0])

    def name(self, index: int) -> str:
        return f"frame {index}" if self._paths is None else os.path.basename(self._paths[index])

    def __getitem__(self, index: int) -> np.ndarray | None:
        if index in self.unreadable:
            return None
        if self._frames is not None:
            frame = self._frames[index]
        else:
            try:
                with Image.open(self._paths[index]) as image:
                    frame = np.asarray(image.convert("RGB"))
            except _IMAGE_ERRORS as e:
                self.unreadable[index] = f"{self._paths[index]}: not a readable image ({e})"
                return None
        self._shape = self._shape or frame.shape
        if frame.shape != self._shape:
            self.unreadable[index] = (f"{self.name(index)}: size {frame.shape[1]}x{frame.shape[0]} differs from the "
                                      f"clip's {self._shape[1]}x{self._shape[0]}")
            return None
        return frame


def _write_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Writes through a hidden temporary file in the same folder and renames it over `path`."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _save_png(path: str, rgb: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    _write_atomic(path, lambda f: f.write(encoded.tobytes()))


def _save_npy(path: str, array: np.ndarray) -> None:
    _write_atomic(path, lambda f: np.save(f, array))


def _error_summary(error: BaseException) -> str:
    """First and last lines of a (possibly long, ffmpeg-log-carrying) error message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def detection_sample_indices(num_frames: int) -> list[int]:
    """The frames, evenly spaced, searched for the face that fixes a clip's static crop."""
    samples = np.linspace(0, num_frames - 1, min(num_frames, DETECTION_SAMPLES)).round().astype(int)
    return sorted(set(samples.tolist()))


def median_face_box(frames: Iterable[np.ndarray | None], tools: FaceTools) -> np.ndarray | None:
    """`[4]` median face box (left, top, right, bottom) over the faces found in `frames` (None: unreadable), or None."""
    boxes = [box for box in (None if f is None else tools.detect(f) for f in frames) if box is not None]
    return np.median(np.stack(boxes), axis=0) if boxes else None


def crop_identity(tools: FaceTools, image: np.ndarray, face_box: np.ndarray, crop: tuple[int, int, int]) -> np.ndarray:
    """`[1, 128]` dlib identity of `image`, the `[S, S, 3]` crop `crop` (left, top, side) of a frame whose face box
    (frame pixels) is `face_box`; the box, mapped into the crop, stands in where HOG misses the face there."""
    left, top, side = crop
    box_in_crop = (np.asarray(face_box, np.float64) - [left, top, left, top]) * (image.shape[0] / side)
    return tools.identity(image, box_in_crop)


def _clip_face_box(frames: _ClipFrames, tools: FaceTools) -> np.ndarray | None:
    """`[4]` median face box over a few evenly spaced frames: one static crop per clip."""
    return median_face_box((frames[i] for i in detection_sample_indices(len(frames))), tools)


def _process_clip(clip: Clip, number: int, root: str, size: int, tools: FaceTools, report: PreprocessReport,
                  progress: bool) -> dict[str, Any]:
    """Writes one clip (frames into a staging folder moved into place at the end); returns its manifest entry."""
    entry: dict[str, Any] = dict(input=clip.path, number=number, topology=TOPOLOGY, status="unreadable",
                                 crop_box=None, frame_size=None, frames=0, frames_kept=0, frames_without_face=0,
                                 frame_indices_without_face=[], files_unreadable=[], source_frame=None, error=None)

    def problem(message: str) -> None:
        report.problems.append(message)
        if progress:
            tqdm.write(f"warning: {message}", file=sys.stderr)

    try:
        frames = _ClipFrames(clip)
    except _VIDEO_ERRORS as e:
        entry["error"] = f"{clip.path}: not a readable video ({_error_summary(e)})"
        report.files_unreadable += 1
        problem(entry["error"])
        return entry
    entry["frames"] = len(frames)
    if not len(frames):
        entry["error"] = f"{clip.path}: no frames"
        report.files_unreadable += 1
        problem(entry["error"])
        return entry

    def finish_unreadable() -> None:
        entry["files_unreadable"] = list(frames.unreadable.values())
        report.files_unreadable += len(frames.unreadable)
        for message in frames.unreadable.values():
            problem(message)

    face_box = _clip_face_box(frames, tools)
    if face_box is None:
        finish_unreadable()
        entry["status"] = "no-face"
        report.clips_without_face += 1
        problem(f"{clip.path}: no face found in up to {DETECTION_SAMPLES} sampled frames; clip skipped")
        return entry
    width, height = frames.frame_size
    crop = square_crop(face_box, width, height)
    left, top, side = crop
    entry["crop_box"], entry["frame_size"] = [left, top, left + side, top + side], [width, height]

    staging = os.path.join(root, f".partial_{clip.key}")
    shutil.rmtree(staging, ignore_errors=True)
    for sub in ("imgs", "ldmks", "thetas"):
        os.makedirs(os.path.join(staging, sub))
    theta = np.eye(2, 3, dtype=np.float32)
    kept, without_face, source = [], [], None
    with tools.face_mesh() as landmarks_of:
        for index in tqdm(range(len(frames)), desc=clip.key, unit="frame", leave=False, disable=not progress):
            frame = frames[index]
            if frame is None:
                continue
            image = crop_and_resize(frame, crop, size)
            landmarks = landmarks_of(image)
            if landmarks is None:
                without_face.append(index)
                continue
            stem = f"{number:04d}_{index:06d}"
            _save_png(os.path.join(staging, "imgs", stem + ".png"), image)
            _save_npy(os.path.join(staging, "ldmks", stem + "_ldmk.npy"), landmarks)
            _save_npy(os.path.join(staging, "thetas", stem + "_theta.npy"), theta)
            kept.append(stem + ".png")
            if source is None:
                source = image, landmarks, stem + ".png"
    finish_unreadable()
    entry.update(frames_kept=len(kept), frames_without_face=len(without_face),
                 frame_indices_without_face=without_face)
    report.frames_without_face += len(without_face)
    if without_face:
        shown = ", ".join(map(str, without_face[:10])) + (", ..." if len(without_face) > 10 else "")
        problem(f"{clip.path}: {len(without_face)} frames without a face skipped ({shown})")
    if not kept:
        shutil.rmtree(staging)
        entry["status"] = "no-face"
        report.clips_without_face += 1
        return entry

    image, landmarks, entry["source_frame"] = source
    prefix = os.path.join(root, f"src_{clip.key}")
    _save_png(prefix + ".png", image)
    _save_npy(prefix + "_ldmk.npy", landmarks)
    _save_npy(prefix + "_theta.npy", theta)
    _save_npy(prefix + "_id.npy", crop_identity(tools, image, face_box, crop))
    final = os.path.join(root, clip.key)
    shutil.rmtree(final, ignore_errors=True)  # left by a run interrupted before its manifest entry was written
    os.replace(staging, final)
    _update_src_map(root, clip.key, kept)
    entry["status"] = "done"
    report.clips_done += 1
    report.frames_kept += len(kept)
    return entry


def _update_src_map(root: str, key: str, names: list[str]) -> None:
    path = os.path.join(root, SRC_MAP)
    src_map = read_src_map(path) if os.path.exists(path) else {}
    src_map = {name: k for name, k in src_map.items() if k != key}
    src_map.update(dict.fromkeys(names, key))
    _write_atomic(path, lambda f: pickle.dump(src_map, f))


def _write_manifest(root: str, manifest: dict[str, Any]) -> None:
    _write_atomic(os.path.join(root, MANIFEST), lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def _load_manifest(root: str, size: int) -> dict[str, Any]:
    """The manifest of an earlier run into `root`, or a fresh one; refuses folders this tool did not make."""
    path = os.path.join(root, MANIFEST)
    fresh = dict(topology=TOPOLOGY, size=size, clips={})
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"{root}: exists and is not a folder")
    if not os.path.exists(path):
        if os.path.isdir(root) and any(not name.startswith(".") for name in os.listdir(root)):
            raise DataError(f"{root}: not empty and has no {MANIFEST}; preprocess writes into a new or its own folder")
        return fresh
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("clips"), dict):
        raise DataError(f"{path}: not a preprocess manifest")
    if (manifest.get("topology"), manifest.get("size")) != (TOPOLOGY, size):
        raise DataError(f"{root}: made with topology {manifest.get('topology')} and size {manifest.get('size')}; "
                        f"use the same size or a new output folder")
    return manifest


def preprocess(input_path: str, output_dir: str, size: int = 256, progress: bool = True) -> PreprocessReport:
    """Preprocesses every clip of `input_path` (see `find_clips`) into `output_dir` in the official layout.

    Clips the output's manifest marks done are skipped; unreadable files and frames without a face are reported in
    the returned report (and live on stderr when `progress`), never raised.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    root = os.path.abspath(output_dir)
    manifest = _load_manifest(root, size)
    clips = find_clips(input_path, {e["input"]: k for k, e in manifest["clips"].items()}, exclude=root)
    os.makedirs(root, exist_ok=True)
    _write_manifest(root, manifest)
    report = PreprocessReport()
    tools = None  # loaded on the first clip that needs work: a rerun over done clips stays instant
    for clip in tqdm(clips, desc="clips", unit="clip", disable=not progress or len(clips) == 1):
        entry = manifest["clips"].get(clip.key)
        if entry is not None and entry.get("status") == "done":
            report.clips_already_done += 1
            continue
        tools = tools or FaceTools()
        number = entry["number"] if entry is not None else 1 + max(
            (e["number"] for e in manifest["clips"].values()), default=-1)
        manifest["clips"][clip.key] = _process_clip(clip, number, root, size, tools, report, progress)
        _write_manifest(root, manifest)
    return report
