"""Writing frames: PNGs and H.264 mp4s through the ffmpeg that ships inside imageio-ffmpeg (offline)."""

import contextlib
import itertools
import os
import warnings
from collections.abc import Iterable, Iterator

import imageio.v2 as imageio
import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 by `clip(x·255)` and truncation, as the official inference script writes PNGs."""
    return np.clip(np.asarray(images) * 255, 0, 255).astype(np.uint8)


@contextlib.contextmanager
def _ffmpeg_subprocess_warnings_silenced() -> Iterator[None]:
    # ffmpeg runs as a subprocess that execs at once; Python's generic fork-with-threads warning does not apply.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
        yield


def write_mp4(path: str, frames: Iterable[np.ndarray], fps: float) -> int:
    """Writes `[H, W, 3]` uint8 frames to an H.264 mp4; returns the number of frames written."""
    count = 0
    with _ffmpeg_subprocess_warnings_silenced():
        with imageio.get_writer(path, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=2,
                                ffmpeg_log_level="error") as writer:
            for frame in frames:
                writer.append_data(frame)
                count += 1
    return count


def write_mp4_atomic(path: str, frames: Iterable[np.ndarray], fps: float) -> int:
    """`write_mp4` through a hidden temporary file beside `path`, renamed over it only once every frame is written:
    an error or interruption leaves `path` as it was."""
    folder, name = os.path.split(os.path.abspath(path))
    partial = os.path.join(folder, f".{name}.partial.mp4")  # ffmpeg picks the container from the extension
    try:
        count = write_mp4(partial, frames, fps)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return count


def read_video_frames(path: str) -> list[np.ndarray]:
    with _ffmpeg_subprocess_warnings_silenced():
        with imageio.get_reader(path) as reader:
            return [np.asarray(f) for f in reader]


def video_length_and_fps(path: str) -> tuple[int, float]:
    """(number of decodable frames, frames per second) of a video; raises OSError/RuntimeError for unreadable files."""
    import imageio_ffmpeg

    with _ffmpeg_subprocess_warnings_silenced():
        length, _ = imageio_ffmpeg.count_frames_and_secs(path)
        with imageio.get_reader(path) as reader:
            fps = float(reader.get_meta_data().get("fps") or 0)
    return int(length), fps


def iterate_video_frames(path: str, limit: int | None = None) -> Iterator[np.ndarray]:
    """The first `limit` (default: all) frames `[H, W, 3]` uint8 RGB of a video, decoded one at a time."""
    with _ffmpeg_subprocess_warnings_silenced():
        with imageio.get_reader(path) as reader:
            for frame in itertools.islice(reader, limit):
                yield np.asarray(frame)
