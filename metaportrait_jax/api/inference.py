"""Using models from Python: animate, enhance, evaluate; and what comes before training: converting official
checkpoints, preprocessing videos, building data sets, summarising a model."""

import dataclasses

import ml_collections
import numpy as np

from metaportrait_jax.api.training import person_clips
from metaportrait_jax.convert.official_base import convert_official_base
from metaportrait_jax.convert.official_sr import convert_official_sr
from metaportrait_jax.data import datasets
from metaportrait_jax.data.preprocess import TOPOLOGY, PreprocessReport, format_report, preprocess
from metaportrait_jax.errors import UserError
from metaportrait_jax.eval import animate as animation
from metaportrait_jax.eval import evaluate as evaluation
from metaportrait_jax.eval.enhance import enhance_folder, enhance_written_frames, sr_checkpoint_config, sr_stream
from metaportrait_jax.eval.evaluate import markdown_report, open_eval_data
from metaportrait_jax.eval.metrics import psnr
from metaportrait_jax.media.video import write_mp4_atomic
from metaportrait_jax.models.generator import generator_forward
from metaportrait_jax.models.summary import format_summary, model_summary
from metaportrait_jax.train.checkpoint import load_model, require_network

__all__ = ["animate", "animate_official", "build_data", "convert", "enhance", "evaluate", "format_report",
           "markdown_report", "preprocess_videos", "reenact", "summarize"]

AnimationReport = animation.AnimationReport
enhance = enhance_folder


def animate(checkpoint: str, source: str, driving: str, output: str, batch_size: int | None = None,
            motion: str = "relative", side_by_side: bool = False, max_frames: int | None = None,
            sr: str | None = None) -> AnimationReport:
    """A portrait photo driven by a video (any sizes: faces are found and cropped) into the mp4 `output`; `sr`, a
    temporal SR checkpoint, doubles the size. The report lists driving frames without a face."""
    return animation.animate_portrait(checkpoint, source, driving, output, batch_size=batch_size, motion=motion,
                                      side_by_side=side_by_side, max_frames=max_frames,
                                      upsample=sr_stream(sr) if sr else None)


def animate_official(checkpoint: str, data: str, output: str, batch_size: int | None = None,
                     sr: str | None = None) -> list[str]:
    """Self-reconstruction of an official-layout folder: PNG frames and an mp4 in `output` (with `sr`, also
    `output/sr_<size>/`); returns the mp4 paths."""
    if sr:  # fail on a bad SR checkpoint before the base model runs
        sr_checkpoint_config(sr)
    videos = [animation.animate_official(checkpoint, data, output, batch_size)]
    if sr:
        videos.append(enhance_written_frames(sr, output))
    return videos


def evaluate(checkpoint: str, data: str, output: str, split: str = "test", max_persons: int | None = None,
             max_frames: int | None = None, batch_size: int | None = None, face_metrics: bool = True,
             fid_weights: str | None = None, fid_variant: str | None = None, progress: bool = True) -> dict:
    """Self-reconstruction and cross-identity metrics of a checkpoint on a frame data set (a TFDS directory or an
    official-layout folder): `output/metrics.json`, `metrics.md` and sample grids; returns the report
    (`markdown_report` formats it). FID needs `fid_weights`, an Inception-v3 state dict; the face metrics
    (CSIM, AED, AKD, MKR) need dlib and MediaPipe."""
    if fid_variant and not fid_weights:
        raise UserError("--fid-variant needs --fid-weights")
    return evaluation.evaluate(checkpoint, data, output, split=split, max_persons=max_persons,
                               max_frames=max_frames, batch_size=batch_size, face_metrics=face_metrics,
                               fid_weights=fid_weights, fid_variant=fid_variant, progress=progress)


@dataclasses.dataclass(frozen=True)
class Reenactment:
    output: str          # the mp4
    frames: int
    psnr: float | None   # mean dB against the driving frames when they show the same person (the ground truth)


def reenact(checkpoint: str, data: str, output: str, person: int | None = None, split: str = "test",
            source_clip: int = 0, driving_clip: int = 1, driving_person: int | None = None,
            batch_size: int | None = None, max_frames: int | None = None, side_by_side: bool = False) -> Reenactment:
    """The source frame of `person`'s clip `source_clip` driven by the frames of clip `driving_clip` of
    `driving_person` (default the same person, whose own landmarks drive; another person's motion is retargeted),
    from a frame data set (a TFDS directory or an official-layout folder); writes the mp4 `output`
    (`side_by_side`: source | driving | result). Unlike `animate` it needs no face tools: the data hold the
    landmarks and identities."""
    if not output.lower().endswith(".mp4"):
        raise UserError(f"{output}: the output must be an .mp4 file")
    config, variables, _ = load_model(checkpoint)
    require_network(config, "generator", checkpoint)
    frames = open_eval_data(data, split, config.model)
    source = person_clips(frames, data, person, [source_clip])[0]
    same_person = driving_person is None or driving_person == int(frames.clips.person[source])
    driving = person_clips(frames, data, int(frames.clips.person[source]) if same_person else driving_person,
                           [driving_clip])[0]
    start, length = int(frames.clips.start[driving]), int(frames.clips.length[driving])
    drivers = np.arange(start, start + min(length, max_frames or length))
    out = animation.animate_frames(generator_forward(config.model), variables, frames, int(frames.clips.source[source]),
                                   drivers, batch_size or config.get("inference", {}).get("batch_size", 8),
                                   "absolute" if same_person else "relative")
    video = out["prediction"]
    if side_by_side:
        still = np.broadcast_to(frames[int(frames.clips.source[source])]["image"], video.shape)
        video = np.concatenate([still, out["driving"], video], axis=2)
    count = write_mp4_atomic(output, video, config.get("inference", {}).get("fps", 23.98))
    score = float(np.mean(psnr(out["prediction"], out["driving"]))) if same_person else None
    return Reenactment(output, count, score)


@dataclasses.dataclass(frozen=True)
class Converted:
    output: str
    fresh_temporal_windows: bool  # official-sr from GFPGAN v1.3: no temporal windows to convert; they start afresh


def convert(what: str, checkpoint: str, output: str, config: ml_collections.ConfigDict,
            key: str | None = None) -> Converted:
    """An official PyTorch checkpoint (read without executing pickled code) as our model checkpoint `output`.
    `what`: "official-base" (ckpt_base.pth.tar; `config` e.g. configs/official_256.py) or "official-sr"
    (temporal_gfpgan.pth or GFPGANv1.3.pth; `config` e.g. configs/temporal_sr.py; `key`: the state dict's entry,
    default params, else params_ema)."""
    if what == "official-base":
        convert_official_base(checkpoint, output, config)
        return Converted(output, False)
    if what == "official-sr":
        return Converted(output, bool(convert_official_sr(checkpoint, output, config, key)))
    raise UserError(f"convert: what must be official-base or official-sr, got {what!r}")


@dataclasses.dataclass(frozen=True)
class Preprocessed:
    report: PreprocessReport
    tfds_dir: str | None  # the talking_head_videos data set, if one was asked for


def preprocess_videos(input_path: str, output: str, size: int = 256, tfds_dir: str | None = None,
                      progress: bool = True) -> Preprocessed:
    """Face crops, MediaPipe landmarks and dlib identities from videos or frame folders into the official layout
    (a rerun resumes); with `tfds_dir`, also a TFDS data set of the result."""
    report = preprocess(input_path, output, size, progress=progress)
    if not tfds_dir:
        return Preprocessed(report, None)
    if report.clips_done + report.clips_already_done == 0:
        raise UserError(f"{output}: no clip was preprocessed, so there is nothing to put in a TFDS data set")
    return Preprocessed(report, datasets.build_from_official_layout(output, tfds_dir, TOPOLOGY, size, 128))


def build_data(what: str, data_dir: str, synthetic: str = "r64", root: str | None = None,
               topology: str = "mediapipe478", image_size: int = 256, id_dim: int = 128, test_persons: int = 0) -> str:
    """A TFDS frame data set in `data_dir`: the procedural talking heads (`what="synthetic"`, preset `synthetic`)
    or an official-layout folder `root` (`what="layout"`); returns its directory."""
    if what == "synthetic":
        return datasets.build_synthetic(data_dir, synthetic)
    if what != "layout":
        raise UserError(f"data: what must be synthetic or layout, got {what!r}")
    if not root:
        raise UserError("data layout needs --root FOLDER (an official-layout folder)")
    return datasets.build_from_official_layout(root, data_dir, topology, image_size, id_dim, test_persons)


def summarize(config: ml_collections.ConfigDict, title: str) -> str:
    """Parameters per sub-network and GMACs per frame of `config.model`, as a table."""
    return format_summary(model_summary(config.model), f"{title}: image {config.model.image_size}²")
