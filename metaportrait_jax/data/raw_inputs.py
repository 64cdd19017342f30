"""A raw portrait photo and a raw driving video -> face crops and MediaPipe landmarks, by `preprocess`'s recipe.

Both go through exactly what `metaportrait-jax preprocess` does to training videos, so a model trained on its output
sees the same kind of input: the dlib HOG face box fixes one static square crop (the official recipe), the crop is
resized to the model's size, MediaPipe's 478-point mesh runs on that crop, and the photo's dlib 128-d identity comes
from the crop too.

The driving video is streamed (decoded twice: a pass over a few sampled frames for the crop, then the crops): only its
`[T, S, S, 3]` crops stay in memory, never the full-size frames.
"""

import dataclasses

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from metaportrait_jax.data.official_layout import DataError
from metaportrait_jax.data.preprocess import (DETECTION_SAMPLES, FaceTools, crop_and_resize, crop_identity,
                                              detection_sample_indices, median_face_box, square_crop)
from metaportrait_jax.media.video import iterate_video_frames, video_length_and_fps

_VIDEO_ERRORS = (OSError, RuntimeError, ValueError)  # what the ffmpeg reader raises for unreadable input


@dataclasses.dataclass(frozen=True)
class SourcePortrait:
    image: np.ndarray       # [S, S, 3] uint8 face crop
    landmarks: np.ndarray   # [478, 2] float32 (x, y) in [0, 1] of the crop
    identity: np.ndarray    # [128] float32 dlib descriptor


@dataclasses.dataclass(frozen=True)
class DrivingVideo:
    frames: np.ndarray      # [T, S, S, 3] uint8 face crops, one static crop for the whole video
    landmarks: np.ndarray   # [T, 478, 2] float32; frames without a face hold their nearest face frame's landmarks
    without_face: list[int]  # indices of the frames MediaPipe found no face in
    fps: float


def _error_line(error: BaseException) -> str:
    """The first line of a (possibly long, ffmpeg-log-carrying) error message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def read_photo(path: str) -> np.ndarray:
    """`[H, W, 3]` uint8 RGB, turned upright by its EXIF orientation (phone photos)."""
    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: does not exist") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({_error_line(e)})") from None


def prepare_source(path: str, size: int, tools: FaceTools) -> SourcePortrait:
    """Crop, landmarks and identity of the most confidently detected face of a photo."""
    photo = read_photo(path)
    face_box = tools.detect(photo)
    if face_box is None:
        raise DataError(f"{path}: no face found")
    crop = square_crop(face_box, photo.shape[1], photo.shape[0])
    image = crop_and_resize(photo, crop, size)
    with tools.face_mesh(static=True) as landmarks_of:
        landmarks = landmarks_of(image)
    if landmarks is None:
        raise DataError(f"{path}: a face was found but MediaPipe found no face landmarks in its {size}² crop")
    return SourcePortrait(image, landmarks, crop_identity(tools, image, face_box, crop).reshape(-1))


def _fill_from_nearest(landmarks: list[np.ndarray | None]) -> np.ndarray:
    """`[T, N, 2]`: each missing entry takes the last found one before it (leading gaps: the first found)."""
    first = next(points for points in landmarks if points is not None)
    filled, last = [], first
    for points in landmarks:
        last = last if points is None else points
        filled.append(last)
    return np.stack(filled)


def prepare_driving(path: str, size: int, tools: FaceTools, max_frames: int | None = None,
                    progress: bool = True) -> DrivingVideo:
    """Static face crop and per-frame landmarks (one MediaPipe tracker over the clip) of a video's first `max_frames`
    frames (default all)."""
    try:
        length, fps = video_length_and_fps(path)
    except FileNotFoundError:
        raise DataError(f"{path}: does not exist") from None
    except _VIDEO_ERRORS as e:
        raise DataError(f"{path}: not a readable video ({_error_line(e)})") from None
    length = min(length, max_frames) if max_frames else length
    if length == 0:
        raise DataError(f"{path}: no frames")
    sampled = set(detection_sample_indices(length))
    try:
        samples = [f for i, f in enumerate(iterate_video_frames(path, length)) if i in sampled]
    except _VIDEO_ERRORS as e:
        raise DataError(f"{path}: video decoding failed ({_error_line(e)})") from None
    face_box = median_face_box(samples, tools)
    if face_box is None:
        raise DataError(f"{path}: no face found in {len(samples)} sampled frames (of up to {DETECTION_SAMPLES})")
    height, width = samples[0].shape[:2]
    crop = square_crop(face_box, width, height)
    frames, found = [], []
    try:
        with tools.face_mesh() as landmarks_of:
            for frame in tqdm(iterate_video_frames(path, length), total=length, desc="driving video", unit="frame",
                              disable=not progress):
                frames.append(crop_and_resize(frame, crop, size))
                found.append(landmarks_of(frames[-1]))
    except _VIDEO_ERRORS as e:
        raise DataError(f"{path}: video decoding failed ({_error_line(e)})") from None
    without_face = [i for i, points in enumerate(found) if points is None]
    if len(without_face) == len(found):
        raise DataError(f"{path}: no usable frame: MediaPipe found no face landmarks in any of its {len(found)} "
                        f"cropped frames")
    return DrivingVideo(np.stack(frames), _fill_from_nearest(found), without_face, fps)
