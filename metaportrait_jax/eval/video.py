"""Writing frames: PNGs and H.264 mp4s through the ffmpeg that ships inside imageio-ffmpeg (offline)."""

import warnings
from collections.abc import Iterable

import imageio.v2 as imageio
import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 by `clip(x·255)` and truncation, as the official inference script writes PNGs."""
    return np.clip(np.asarray(images) * 255, 0, 255).astype(np.uint8)


def write_mp4(path: str, frames: Iterable[np.ndarray], fps: float) -> int:
    """Writes `[H, W, 3]` uint8 frames to an H.264 mp4; returns the number of frames written."""
    count = 0
    with warnings.catch_warnings():
        # ffmpeg runs as a subprocess that execs at once; Python's generic fork-with-threads warning does not apply.
        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
        with imageio.get_writer(path, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=2,
                                ffmpeg_log_level="error") as writer:
            for frame in frames:
                writer.append_data(frame)
                count += 1
    return count


def read_video_frames(path: str) -> list[np.ndarray]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
        with imageio.get_reader(path) as reader:
            return [np.asarray(f) for f in reader]
