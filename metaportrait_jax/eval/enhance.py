"""Temporal super-resolution of whole videos (`metaportrait-jax enhance`, `animate --sr`), seamless and in flat memory.

The official inference cuts a video into independent 16-frame chunks, so frames near chunk borders see replicated
neighbours instead of real ones and seams show. Here every chunk of `chunk` output frames is computed from those
frames plus `temporal_depth` real frames on each side (all an output frame can depend on) with the windows replicating
only at the real video ends, so the output equals processing the whole clip at once. Each layer computes only the
frames that the chunk's outputs need (`TemporalSR(margin=...)`), so the extra context costs the cheap early layers
most. Memory holds one chunk and its context, whatever the video's length; one compiled shape serves every chunk.
"""

import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from metaportrait_jax.data.official_layout import DataError
from metaportrait_jax.media.video import to_uint8, write_mp4
from metaportrait_jax.models.temporal_sr import TemporalSR, temporal_depth
from metaportrait_jax.train.checkpoint import load_model, read_checkpoint_config, require_network

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")


@functools.lru_cache(maxsize=4)
def _chunk_forward(model_json: str):
    model_config = ml_collections.ConfigDict(json.loads(model_json))
    margin = temporal_depth(model_config)
    network = TemporalSR(model_config)
    return jax.jit(lambda variables, frames, lo, hi: network.apply(variables, frames, margin=margin, valid=(lo, hi)))


def chunk_forward(model_config: ml_collections.ConfigDict):
    """Jitted `(variables, frames [1, L, h, w, 3], lo, hi) -> [1, L − 2·depth, 2h, 2w, 3]`: the middle frames of a
    stretch of video whose real frames are [lo, hi) (see `TemporalSR.__call__`). One per architecture, so every
    video of a process reuses the compiled program."""
    return _chunk_forward(json.dumps(model_config.to_dict(), sort_keys=True))


def enhance_clip(forward, variables, model_config: ml_collections.ConfigDict, frames: Iterable[np.ndarray],
                 chunk: int) -> Iterator[np.ndarray]:
    """Super-resolves a video given as `[h, w, 3]` frames (uint8 or [0, 1] floats); yields `[2h, 2w, 3]` float frames
    in [0, 1]-ish (unclamped), each equal to the whole clip's frame. `forward` comes from `chunk_forward`.

    Reads at most `chunk + 2·depth` frames ahead of the last frame it yielded.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 frame, got {chunk}")
    margin = temporal_depth(model_config)
    span = chunk + 2 * margin
    source = iter(frames)
    window: list[np.ndarray] = []   # video frames [first, first + len(window))
    first, ended, done = 0, False, 0
    while True:
        # Chunk k yields frames [done, done + chunk); it needs frames up to done + chunk + margin.
        while not ended and first + len(window) < done + chunk + margin:
            try:
                window.append(_as_unit_float(next(source)))
            except StopIteration:
                ended = True
        total = first + len(window) if ended else None
        if total is not None and done >= total:
            return
        start = done - margin                          # video frame at position 0 of the stretch
        positions = np.clip(np.arange(start, start + span), first, first + len(window) - 1) - first
        stretch = np.stack([window[p] for p in positions])[None]
        lo = max(0, -start)
        hi = span if total is None else min(span, total - start)
        out = np.asarray(forward(variables, stretch, jnp.int32(lo), jnp.int32(hi)))[0]
        count = chunk if total is None else min(chunk, total - done)
        yield from out[:count]
        done += count
        # Keep only what later chunks can still need: frames from done − margin on.
        drop = max(0, done - margin - first)
        window, first = window[drop:], first + drop


def _as_unit_float(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype == np.uint8:
        return frame.astype(np.float32) / 255
    return frame.astype(np.float32)


def video_frames(path: str) -> tuple[list[str], Iterator[np.ndarray]]:
    """(frame names, lazily read uint8 RGB frames) of a folder of images (in name order) or a video file; video frames
    are named `%08d.png`."""
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise DataError(f"{path}: no frame images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return names, (_read_image(os.path.join(path, n)) for n in names)
    if not path.lower().endswith(VIDEO_SUFFIXES):
        raise DataError(f"{path}: not a video ({', '.join(VIDEO_SUFFIXES)}) or a folder of frames")
    try:
        reader = imageio.get_reader(path)
        count = reader.count_frames()
    except (OSError, RuntimeError, ValueError) as e:
        raise DataError(f"{path}: not a readable video ({e})") from None
    if count == 0:
        raise DataError(f"{path}: the video has no frames")
    return [f"{i:08d}.png" for i in range(count)], (np.asarray(f)[..., :3] for f in reader)


def _read_image(path: str) -> np.ndarray:
    try:
        image = imageio.imread(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.asarray(image[..., :3], np.uint8)


def _checked_sizes(frames: Iterator[np.ndarray], input_size: int, where: str) -> Iterator[np.ndarray]:
    for index, frame in enumerate(frames):
        if frame.shape[:2] != (input_size, input_size):
            raise DataError(f"{where}: frame {index} is {frame.shape[1]}x{frame.shape[0]}; the model takes "
                            f"{input_size}x{input_size} frames")
        yield frame


def sr_checkpoint_config(checkpoint_dir: str) -> ml_collections.ConfigDict:
    """The config of a temporal SR model checkpoint, read without its weights; refuses other checkpoints."""
    config = read_checkpoint_config(checkpoint_dir)
    require_network(config, "temporal_sr", checkpoint_dir,
                    " (convert official-sr, or train --config configs/temporal_sr.py)")
    return config


def load_sr_model(checkpoint_dir: str) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, variables) of a temporal SR model checkpoint."""
    sr_checkpoint_config(checkpoint_dir)
    config, variables, _ = load_model(checkpoint_dir)
    return config, variables


def enhance_folder(checkpoint_dir: str, input_path: str, output_dir: str, chunk: int | None = None) -> str:
    """Writes `OUT/<frame name>` (PNG, 2x the input size) for every input frame and `OUT/out_<size>.mp4`; returns the
    mp4's path. The input is a folder of frames (name order) or a video."""
    names, frames = video_frames(input_path)
    config, variables = load_sr_model(checkpoint_dir)
    frames = _checked_sizes(frames, config.model.out_size // 2, input_path)
    chunk = chunk or config.get("inference", {}).get("chunk_frames", 16)
    forward = chunk_forward(config.model)
    os.makedirs(output_dir, exist_ok=True)
    outputs = [os.path.splitext(n)[0] + ".png" for n in names]
    with tqdm(total=len(names), desc="enhance", unit="frame") as bar:
        for name, frame in zip(outputs, enhance_clip(forward, variables, config.model, frames, chunk)):
            imageio.imwrite(os.path.join(output_dir, name), to_uint8(frame))
            bar.update(1)
    video = os.path.join(output_dir, f"out_{config.model.out_size}.mp4")
    fps = config.get("inference", {}).get("fps", 25.0)
    write_mp4(video, (imageio.imread(os.path.join(output_dir, n)) for n in outputs), fps)
    return video


def enhance_written_frames(checkpoint_dir: str, frames_dir: str) -> str:
    """Chains SR after `animate`: super-resolves the PNG frames it wrote to `frames_dir` (name order, one video, as
    the official SR step reads the base model's output folder) into `frames_dir/sr_<size>/`; returns the mp4."""
    config = sr_checkpoint_config(checkpoint_dir)
    return enhance_folder(checkpoint_dir, frames_dir, os.path.join(frames_dir, f"sr_{config.model.out_size}"))


def sr_stream(checkpoint_dir: str, chunk: int | None = None) -> Callable[[Iterable[np.ndarray]], Iterator[np.ndarray]]:
    """A temporal SR checkpoint as a stream transform: `[S, S, 3]` uint8 frames in, `[2S, 2S, 3]` uint8 frames out
    (seamless, flat memory); `animate --source/--driving --sr` passes it as `animate_portrait(upsample=...)`."""
    config, variables = load_sr_model(checkpoint_dir)
    forward = chunk_forward(config.model)
    chunk = chunk or config.get("inference", {}).get("chunk_frames", 16)

    def upsample(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        checked = _checked_sizes(iter(frames), config.model.out_size // 2, "the base model's output")
        return (to_uint8(frame) for frame in enhance_clip(forward, variables, config.model, checked, chunk))

    return upsample
