"""Animation: self-reconstruction on official-layout folders (`animate --official-data`), cross-clip reenactment on
any frame source (one source frame driven by another clip's frames), and a raw portrait photo animated by a raw
driving video (`animate --source --driving`)."""

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import cv2
import imageio.v2 as imageio
import numpy as np
from tqdm import tqdm

from metaportrait_jax.data.official_layout import DataError, OfficialLayout
from metaportrait_jax.data.pipeline import pair_example
from metaportrait_jax.data.preprocess import FaceTools
from metaportrait_jax.data.raw_inputs import prepare_driving, prepare_source
from metaportrait_jax.data.sources import FrameSource
from metaportrait_jax.media.video import to_uint8, write_mp4, write_mp4_atomic
from metaportrait_jax.models.generator import BATCH_KEYS, generator_forward
from metaportrait_jax.ops.retarget import motion_targets
from metaportrait_jax.ops.topology import get_topology
from metaportrait_jax.train.checkpoint import CheckpointError, load_model, require_network


def animate_official(checkpoint_dir: str, data_dir: str, output_dir: str, batch_size: int | None = None) -> str:
    """Writes `OUT/<driving file name>` (PNG) for every frame and `OUT/out_<size>.mp4`; returns the mp4 path.

    The forward is compiled once (the last batch is padded); weights are passed as arguments, not closed over.
    """
    config, variables, _ = load_model(checkpoint_dir)
    require_network(config, "generator", checkpoint_dir)
    model = config.model
    layout = OfficialLayout.open(data_dir, get_topology(model.topology), model.image_size, model.id_dim)
    batch_size = batch_size or config.get("inference", {}).get("batch_size", 1)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    os.makedirs(output_dir, exist_ok=True)
    forward = generator_forward(model)
    written = []
    with tqdm(total=len(layout), desc="animate", unit="frame") as bar:
        for names, batch, valid in layout.iterate_batches(batch_size):
            frames = to_uint8(forward(variables, batch)["prediction"][:valid])
            for name, frame in zip(names, frames):
                imageio.imwrite(os.path.join(output_dir, name), frame)
                written.append(name)
            bar.update(valid)
    video = os.path.join(output_dir, f"out_{model.image_size}.mp4")
    fps = config.get("inference", {}).get("fps", 23.98)
    write_mp4(video, (imageio.imread(os.path.join(output_dir, n)) for n in sorted(written)), fps)
    return video


def generate(forward, variables, examples: Iterable[dict[str, np.ndarray]], batch_size: int,
             keys: Sequence[str] = ("prediction",)) -> Iterator[dict[str, np.ndarray]]:
    """Runs `forward` (from `generator_forward`) over `examples` (dicts holding at least `BATCH_KEYS`, no batch axis)
    `batch_size` at a time; yields per batch `{key: uint8 [b, H, W, 3]}` for `keys` of the generator outputs.

    Every call has one shape (the last batch is padded by repeating its last example), so it compiles once.
    """
    iterator = iter(examples)
    while chunk := list(itertools.islice(iterator, batch_size)):
        valid = len(chunk)
        chunk += [chunk[-1]] * (batch_size - valid)
        out = forward(variables, {k: np.stack([e[k] for e in chunk]) for k in BATCH_KEYS})
        yield {k: to_uint8(np.asarray(out[k])[:valid]) for k in keys}


def animate_frames(forward, variables, frames: FrameSource, source_record: int, driving_records,
                   batch_size: int = 8, motion: str = "absolute") -> dict[str, np.ndarray]:
    """Drives frame `source_record` with each of `driving_records`, all records of `frames`; `forward` comes from
    `generator_forward` (one compiled shape: the last batch is padded). `motion`: "absolute" (the driving frames'
    own landmarks, self-reconstruction) or "relative" (`ops.retarget`, another person driving).

    Returns uint8 `[T, H, W, 3]` arrays: `prediction`, `deformed` (the warped source) and `driving` (the ground
    truth when source and driving frames show the same person).
    """
    source = frames[int(source_record)]
    drivers = [frames[int(r)] for r in driving_records]
    targets = motion_targets(source["landmarks"], np.stack([d["landmarks"] for d in drivers]), motion)
    examples = (pair_example(source, {"image": d["image"], "landmarks": t}, source["identity"], frames.topology)
                for d, t in zip(drivers, targets))
    batches = list(generate(forward, variables, examples, batch_size, ("prediction", "deformed")))
    return {"prediction": np.concatenate([b["prediction"] for b in batches]),
            "deformed": np.concatenate([b["deformed"] for b in batches]),
            "driving": np.stack([d["image"] for d in drivers])}


# What `animate --source/--driving` can produce from raw photos and videos (see `data.raw_inputs`).
RAW_TOPOLOGY, RAW_ID_DIM = "mediapipe478", 128


def check_raw_input_model(checkpoint_dir: str, model_config) -> None:
    """Refuses a model whose landmarks or identity vectors raw photos and videos cannot give."""
    if (model_config.topology, model_config.id_dim) != (RAW_TOPOLOGY, RAW_ID_DIM):
        raise CheckpointError(
            f"{checkpoint_dir}: the model takes {model_config.topology!r} landmarks and {model_config.id_dim}-d "
            f"identities, but raw photos and videos give {RAW_TOPOLOGY!r} landmarks and {RAW_ID_DIM}-d dlib identities "
            f"(use a model trained on `preprocess` output, or --official-data)")


@dataclasses.dataclass(frozen=True)
class AnimationReport:
    output: str
    frames: int
    driving_frames_without_face: list[int]
    fps: float


def _side_by_side(source: np.ndarray, driving: np.ndarray, result: np.ndarray) -> np.ndarray:
    """`[H, W, 3]` source | driving | result, the first two resized to the result's height (it may be upsampled)."""
    height = result.shape[0]
    panels = [p if p.shape[0] == height else cv2.resize(p, (height, height), interpolation=cv2.INTER_CUBIC)
              for p in (source, driving)]
    return np.concatenate([*panels, result], axis=1)


def animate_portrait(checkpoint_dir: str, source_path: str, driving_path: str, output_path: str, *,
                     batch_size: int | None = None, motion: str = "relative", side_by_side: bool = False,
                     max_frames: int | None = None, upsample: Callable[[Iterator[np.ndarray]], Iterator[np.ndarray]]
                     | None = None, progress: bool = True) -> AnimationReport:
    """Animates the face of a photo with the motion of the face in a video; writes an H.264 mp4 at the video's fps.

    Both inputs are cropped and landmarked as `preprocess` does (`data.raw_inputs`); `motion` "relative" moves the
    photo's own landmarks by each driving frame's change from the first (scale-aligned, `ops.retarget`), "absolute"
    uses the driving landmarks as they are (same person, same framing). The checkpoint is any `save_model`
    directory with mediapipe478 landmarks and 128-d identities: a pretrained or a personalised model. `upsample`
    maps the stream of `[S, S, 3]` uint8 predictions to the frames written (the place for temporal super-resolution).
    The mp4 appears only once complete.
    """
    config, variables, _ = load_model(checkpoint_dir)
    require_network(config, "generator", checkpoint_dir)
    model = config.model
    check_raw_input_model(checkpoint_dir, model)
    if not output_path.lower().endswith(".mp4"):
        raise DataError(f"{output_path}: the output must be an .mp4 file")
    batch_size = batch_size or config.get("inference", {}).get("batch_size", 1)
    tools = FaceTools()
    source = prepare_source(source_path, model.image_size, tools)
    driving = prepare_driving(driving_path, model.image_size, tools, max_frames, progress)
    topology = get_topology(model.topology)
    targets = motion_targets(source.landmarks, driving.landmarks, motion)
    source_record = {"image": source.image, "landmarks": source.landmarks}
    examples = (pair_example(source_record, {"image": frame, "landmarks": points}, source.identity, topology)
                for frame, points in zip(driving.frames, targets))
    forward = generator_forward(model)
    bar = tqdm(total=len(targets), desc="animate", unit="frame", disable=not progress)

    def predictions() -> Iterator[np.ndarray]:
        for batch in generate(forward, variables, examples, batch_size):
            bar.update(len(batch["prediction"]))
            yield from batch["prediction"]

    results = upsample(predictions()) if upsample else predictions()
    if side_by_side:
        results = (_side_by_side(source.image, d, r) for d, r in zip(driving.frames, results))
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    fps = driving.fps or config.get("inference", {}).get("fps", 23.98)
    with bar:
        count = write_mp4_atomic(output_path, results, fps)
    return AnimationReport(output_path, count, driving.without_face, fps)
