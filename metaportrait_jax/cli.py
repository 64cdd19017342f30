"""`metaportrait-jax`: one console script, one function per subcommand.

Config fields are overridden with `--config.a.b=value` after any subcommand that takes `--config`. User mistakes
(bad files, bad configs) end with a one-line `metaportrait-jax: error: ...` and exit status 2, without a traceback.
"""

import argparse
import os
import sys
from collections.abc import Sequence

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _load_config(spec: str, overrides: Sequence[str]):
    from metaportrait_jax.config import load_config

    return load_config(spec, overrides)


def cmd_summary(args, overrides):
    from metaportrait_jax.models.summary import format_summary, model_summary

    config = _load_config(args.config, overrides)
    print(format_summary(model_summary(config.model), f"{args.config}: image {config.model.image_size}²"))


def cmd_convert(args, overrides):
    from metaportrait_jax.convert.official_base import convert_official_base

    config = _load_config(args.config, overrides)
    convert_official_base(args.checkpoint, args.output, config)
    print(f"wrote {args.output}")


def cmd_animate(args, overrides):
    from metaportrait_jax.eval.animate import animate_official

    if overrides:
        raise _UsageError("animate takes its config from the checkpoint; --config.* overrides do not apply")
    raw = args.source or args.driving
    if bool(args.official_data) == bool(raw):
        raise _UsageError("animate needs either --source PHOTO --driving VIDEO or --official-data DATA")
    if raw:
        animate_raw(args)
        return
    raw_only = [flag for flag, value in (("--side-by-side", args.side_by_side), ("--max-frames", args.max_frames),
                                         ("--sr", args.sr), ("--motion", args.motion)) if value]
    if raw_only:
        raise _UsageError(f"{', '.join(raw_only)} apply to --source/--driving animation, not --official-data")
    video = animate_official(args.checkpoint, args.official_data, args.output, args.batch_size)
    print(f"wrote frames and {video}")


def animate_raw(args) -> None:
    """`animate --source PHOTO --driving VIDEO --output OUT.mp4`: any portrait, any driving video."""
    from metaportrait_jax.eval.animate import animate_portrait

    if not (args.source and args.driving):
        raise _UsageError("animate needs both --source PHOTO and --driving VIDEO")
    if args.sr:
        # Temporal super-resolution chains in here as `animate_portrait(..., upsample=<the SR model on a stream>)`.
        raise _UsageError("--sr: temporal super-resolution is not available yet")
    report = animate_portrait(args.checkpoint, args.source, args.driving, args.output, batch_size=args.batch_size,
                              motion=args.motion or "relative", side_by_side=args.side_by_side,
                              max_frames=args.max_frames)
    if report.driving_frames_without_face:
        shown = ", ".join(map(str, report.driving_frames_without_face[:10]))
        more = ", ..." if len(report.driving_frames_without_face) > 10 else ""
        print(f"warning: {len(report.driving_frames_without_face)} driving frames had no face landmarks ({shown}"
              f"{more}); they reuse the nearest earlier frame's", file=sys.stderr)
    print(f"wrote {report.output} ({report.frames} frames at {report.fps:g} fps)")


def cmd_evaluate(args, overrides):
    from metaportrait_jax.eval.evaluate import evaluate, markdown_report

    if overrides:
        raise _UsageError("evaluate takes its config from the checkpoint; --config.* overrides do not apply")
    if args.fid_variant and not args.fid_weights:
        raise _UsageError("--fid-variant needs --fid-weights")
    report = evaluate(args.checkpoint, args.data, args.output, split=args.split, max_persons=args.max_persons,
                      max_frames=args.max_frames, batch_size=args.batch_size, face_metrics=not args.no_face_metrics,
                      fid_weights=args.fid_weights, fid_variant=args.fid_variant, progress=not args.no_progress)
    print(markdown_report(report))
    print(f"wrote {os.path.join(args.output, 'metrics.json')}, metrics.md and sample grids")


def cmd_preprocess(args, overrides):
    from metaportrait_jax.data.preprocess import format_report, preprocess

    if overrides:
        raise _UsageError("preprocess takes no --config.* overrides")
    report = preprocess(args.input, args.output, args.size)
    print(format_report(report))
    if args.tfds:
        from metaportrait_jax.data.datasets import build_from_official_layout
        from metaportrait_jax.data.preprocess import TOPOLOGY

        if report.clips_done + report.clips_already_done == 0:
            raise _UsageError(f"{args.output}: no clip was preprocessed, so there is nothing to put in a TFDS data set")
        directory = build_from_official_layout(args.output, args.tfds, TOPOLOGY, args.size, 128)
        print(f"talking_head_videos data set: {directory}")


def cmd_demo(args, overrides):
    """End to end on the embedded synthetic data: build it, pretrain the warp then the full stage (tiny, 64²), and
    animate held-out persons: each one's first-clip source frame driven by its second clip (ground truth known)."""
    import json

    import numpy as np

    from metaportrait_jax.data.datasets import build_synthetic
    from metaportrait_jax.data.sources import TfdsFrames
    from metaportrait_jax.eval.animate import animate_frames, generator_forward
    from metaportrait_jax.eval.video import write_mp4
    from metaportrait_jax.train.checkpoint import load_model

    out = os.path.abspath(args.output)
    # 5x the official learning rate: a few hundred CPU steps then show the model at work (override to change it)
    common = [f"data.data_dir={os.path.join(out, 'data')}", "train.image_every=50", "train.checkpoint_every=100",
              "train.learning_rate=1e-3"]
    warp = _load_config(os.path.join(REPO_CONFIGS, "pretrain_warp.py:tiny"),
                        [*common, f"train.steps={args.warp_steps}", f"train.decay_steps=({args.warp_steps},)",
                         *overrides])
    print(f"1/3 warp stage, {args.warp_steps} steps -> {out}/warp (TensorBoard: tensorboard --logdir {out})")
    warp_export = train_from_config(warp, os.path.join(out, "warp"))
    full = _load_config(os.path.join(REPO_CONFIGS, "pretrain_full.py:tiny"),
                        [*common, f"train.steps={args.full_steps}", f"train.decay_steps=({args.full_steps},)",
                         f"init_from={warp_export}", *overrides])
    print(f"2/3 full stage, {args.full_steps} steps -> {out}/full")
    full_export = train_from_config(full, os.path.join(out, "full"))
    if warp_export is None or full_export is None:
        print(f"stopped early; rerun to resume from {out}")
        return

    print("3/3 animating held-out persons (source from clip 1, motion and ground truth from clip 2)")
    config, variables, _ = load_model(full_export)
    test = TfdsFrames(build_synthetic(config.data.data_dir, config.data.synthetic), "test")
    forward = generator_forward(config.model)  # compiled once for every person
    rows, scores = [], {"prediction": [], "warped_source": [], "source_copy": []}
    for person in test.clips.persons()[:args.persons]:
        first, second = test.clips.clips_of(person)[:2]
        drivers = range(int(test.clips.start[second]), int(test.clips.start[second] + test.clips.length[second]))
        result = animate_frames(forward, variables, test, int(test.clips.source[first]), drivers)
        source = np.broadcast_to(test[int(test.clips.source[first])]["image"], result["driving"].shape)
        rows.append(np.concatenate([source, result["driving"], result["deformed"], result["prediction"]], axis=2))
        truth = result["driving"].astype(np.float64)
        for name, images in (("prediction", result["prediction"]), ("warped_source", result["deformed"]),
                             ("source_copy", source)):
            mse = np.mean((images.astype(np.float64) - truth) ** 2)
            scores[name].append(10 * np.log10(255 ** 2 / mse))
    video = np.concatenate(rows, axis=1)  # [T, persons·H, 4·W, 3]
    write_mp4(os.path.join(out, "animation.mp4"), video, fps=config.inference.fps)
    step = max(1, len(video) // 6)
    from PIL import Image

    grid = np.concatenate(list(video[::step][:6]), axis=1)
    Image.fromarray(grid).resize((2 * grid.shape[1], 2 * grid.shape[0]), Image.NEAREST).save(
        os.path.join(out, "animation.png"))
    plot_losses({stage: os.path.join(out, stage, "metrics.jsonl") for stage in ("warp", "full")},
                os.path.join(out, "losses.png"))
    summary = {name: float(np.mean(v)) for name, v in scores.items()}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"psnr_db": summary, "persons": len(rows), "frames_per_person": len(video)}, f, indent=1)
    print(f"held-out PSNR: prediction {summary['prediction']:.2f} dB, warped source {summary['warped_source']:.2f} "
          f"dB, copying the source {summary['source_copy']:.2f} dB")
    print(f"demo outputs in {out}: animation.mp4 and animation.png (rows: persons; columns: source | driving | "
          f"warped source | prediction), losses.png, metrics.json, warp/ and full/ (checkpoints, TensorBoard, "
          f"metrics.jsonl)")


def plot_losses(logs: dict[str, str], path: str) -> None:
    """One panel per training run: every loss in its metrics.jsonl against the step (log scale)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(logs), figsize=(6 * len(logs), 4), squeeze=False)
    for ax, (name, log) in zip(axes[0], logs.items()):
        with open(log) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for key in ("warp_perceptual", "perceptual", "eye", "mouth", "feature_matching", "generator_gan",
                    "discriminator_loss"):
            if key in rows[0]:
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
        ax.set(title=f"{name} stage", xlabel="step", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cmd_data(args, overrides):
    from metaportrait_jax.data import datasets

    if overrides:
        raise _UsageError("data takes no --config.* overrides")
    if args.what == "synthetic":
        directory = datasets.build_synthetic(args.data_dir, args.config)
    else:
        if not args.root:
            raise _UsageError("data layout needs --root FOLDER (an official-layout folder)")
        directory = datasets.build_from_official_layout(args.root, args.data_dir, args.topology, args.image_size,
                                                        args.id_dim, args.test_persons)
    print(f"data set ready: {directory}")


def open_frames(data, model):
    """The frame source a config's `data` section names (building the synthetic set on first use)."""
    from metaportrait_jax.data import datasets, sources
    from metaportrait_jax.ops.topology import get_topology

    if data.source == "synthetic":
        frames = sources.TfdsFrames(datasets.build_synthetic(data.data_dir, data.synthetic), data.split)
    elif data.source == "tfds":
        frames = sources.TfdsFrames(data.path, data.split)
    elif data.source == "layout":
        frames = sources.OfficialLayoutFrames(data.path, get_topology(model.topology), model.image_size, model.id_dim)
    else:
        raise _UsageError(f"config.data.source must be synthetic, tfds or layout, got {data.source!r}")
    problems = sources.fit_problems(frames, model)
    if problems:
        raise _UsageError(f"the data does not fit the model: {', '.join(problems)}; set --config.model.* to match")
    return frames


def train_from_config(config, workdir: str, progress: bool = True) -> str | None:
    """Runs (or resumes) the training `config` describes; returns the exported model checkpoint once complete."""
    import jax

    from metaportrait_jax.convert.vgg import perceptual_features
    from metaportrait_jax.data.pipeline import PipelineSpec, make_dataset, make_iterator
    from metaportrait_jax.train.checkpoint import save_model
    from metaportrait_jax.train.loop import run

    frames = open_frames(config.data, config.model)
    try:
        spec = PipelineSpec("pairs", config.train.batch_size, seed=config.seed, source=config.data.pair_source,
                            workers=config.data.workers)
        dataset = make_dataset(frames, spec, jax.process_index(), jax.process_count())
    except ValueError as e:  # a config value the pipeline cannot use
        raise _UsageError(f"config: {e}") from None
    network, params = perceptual_features(config.train.perceptual)
    encoder, encoder_variables = (load_identity_encoder(config.train.identity_encoder)
                                  if config.train.loss.identity > 0 else (None, None))
    state = run(config, workdir, lambda s: make_iterator(dataset, spec, s), network, {"params": params},
                encoder, encoder_variables, progress=progress)
    if int(state.step) < config.train.steps:
        return None
    export = os.path.join(workdir, "export")
    if jax.process_index() == 0 and not os.path.exists(export):
        save_model(export, config, jax.device_get(state.generator), jax.device_get(state.discriminator))
    return export


def load_identity_encoder(spec: str):
    """`package.module:factory` -> factory() = (flax module, variables): the pluggable identity-loss encoder."""
    import importlib

    module_name, _, factory = spec.partition(":")
    if not module_name or not factory:
        raise _UsageError(f"train.identity_encoder must look like package.module:factory, got {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), factory)()
    except (ImportError, AttributeError) as e:
        raise _UsageError(f"train.identity_encoder {spec!r}: {e}") from None


def cmd_train(args, overrides):
    from metaportrait_jax.train.sharding import initialize_processes

    initialize_processes()
    config = _load_config(args.config, overrides)
    export = train_from_config(config, args.workdir, progress=not args.no_progress)
    if export:
        print(f"trained {config.train.steps} steps; model checkpoint: {export}")
    else:
        print(f"stopped early; rerun the same command to resume from {args.workdir}")


class _UsageError(ValueError):
    pass


def _user_errors() -> tuple[type[BaseException], ...]:
    from metaportrait_jax.config import ConfigError
    from metaportrait_jax.convert.torch_reader import TorchFileError

    errors = [ConfigError, TorchFileError, _UsageError, FileNotFoundError, NotADirectoryError, PermissionError]
    try:
        from metaportrait_jax.convert.official_base import CheckpointMismatchError
        from metaportrait_jax.data.official_layout import DataError
        from metaportrait_jax.data.preprocess import MissingToolsError
        from metaportrait_jax.train.checkpoint import CheckpointError
        errors += [CheckpointMismatchError, DataError, CheckpointError, MissingToolsError]
    except ImportError:
        pass
    return tuple(errors)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaportrait-jax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="parameters per sub-network and GMACs per frame")
    p.add_argument("--config", default=os.path.join(REPO_CONFIGS, "official_256.py"))
    p.set_defaults(run=cmd_summary)

    p = sub.add_parser("convert", help="convert official PyTorch checkpoints")
    p.add_argument("what", choices=["official-base"])
    p.add_argument("--checkpoint", required=True, help="ckpt_base.pth.tar (read without executing pickled code)")
    p.add_argument("--output", required=True, help="new directory for the Orbax checkpoint and config.json")
    p.add_argument("--config", default=os.path.join(REPO_CONFIGS, "official_256.py"))
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("animate", help="animate a portrait photo with a driving video, or official-layout data")
    p.add_argument("--checkpoint", required=True,
                   help="a model checkpoint (save_model directory: pretrained, converted or personalised)")
    p.add_argument("--source", metavar="PHOTO", help="portrait photo to animate (any size; the face is found and "
                   "cropped); needs a model with mediapipe478 landmarks and 128-d identities")
    p.add_argument("--driving", metavar="VIDEO", help="video whose face motion drives the photo")
    p.add_argument("--official-data", help="a folder in the official inference layout (self-reconstruction)")
    p.add_argument("--output", required=True, help="OUT.mp4 with --source/--driving; a folder with --official-data")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--motion", choices=["relative", "absolute"],
                   help="relative (default): the photo's own landmarks moved by the driving face's change from its "
                        "first frame, scale aligned; absolute: the driving landmarks as they are (same person)")
    p.add_argument("--side-by-side", action="store_true", help="write source | driving | result")
    p.add_argument("--max-frames", type=_positive_int, help="animate only the first N driving frames")
    p.add_argument("--sr", metavar="DIR", help="chain a temporal super-resolution checkpoint (not available yet)")
    p.set_defaults(run=cmd_animate)

    p = sub.add_parser("evaluate", help="self-reconstruction and cross-identity metrics (JSON and Markdown)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="a TFDS frame data set (synthetic_talking_heads or "
                   "talking_head_videos: the folder with frames.json, or one above it) or an official-layout folder")
    p.add_argument("--split", default="test", help="TFDS split (default test)")
    p.add_argument("--output", required=True, help="folder for metrics.json, metrics.md and sample grids")
    p.add_argument("--max-persons", type=_positive_int, help="evaluate the first N persons")
    p.add_argument("--max-frames", type=_positive_int, help="driving frames per person (default all)")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--fid-weights", metavar="PTH", help="Inception-v3 state dict for FID: pytorch-fid's "
                   "pt_inception-2015-12-05-6726825d.pth (FID as published) or torchvision's inception_v3_google")
    p.add_argument("--fid-variant", choices=["pytorch_fid", "torchvision"],
                   help="which network the weights are for (default: told by their fc size)")
    p.add_argument("--no-face-metrics", action="store_true", help="skip CSIM, AED, AKD and MKR (dlib, MediaPipe)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("preprocess", help="face crops, MediaPipe landmarks and dlib identities from real videos")
    p.add_argument("--input", required=True,
                   help="a video, a folder of frame images (one clip), or a folder of videos and frame folders")
    p.add_argument("--output", required=True, help="output root in the official layout (a rerun resumes it)")
    p.add_argument("--size", type=_positive_int, default=256, help="side of the square face crops in pixels")
    p.add_argument("--tfds", metavar="DATA_DIR", help="also build a talking_head_videos TFDS data set there")
    p.set_defaults(run=cmd_preprocess)

    p = sub.add_parser("data", help="build a TFDS data set (array_record) of frames for the input pipelines")
    p.add_argument("what", choices=["synthetic", "layout"],
                   help="synthetic: the procedural talking heads; layout: an official-layout folder")
    p.add_argument("--data-dir", required=True, help="TFDS data directory to build into")
    p.add_argument("--config", default="r64", help="synthetic: r64, r128, r256, r64_tiny, r64_large, r256_large")
    p.add_argument("--root", help="layout: the official-layout folder (e.g. `preprocess` output)")
    p.add_argument("--topology", default="mediapipe478", help="layout: landmark topology of its *_ldmk.npy files")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--id-dim", type=int, default=128, help="layout: size of the src_<k>_id.npy embeddings")
    p.add_argument("--test-persons", type=int, default=0, help="layout: the last N clips form the test split")
    p.set_defaults(run=cmd_data)

    p = sub.add_parser("train", help="pretrain the warp or full stage (resumes from the work directory)")
    p.add_argument("--config", required=True, help="e.g. configs/pretrain_warp.py:tiny")
    p.add_argument("--workdir", required=True, help="checkpoints, logs and the final export go here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("demo", help="end to end on the synthetic data: build, pretrain warp + full, animate")
    p.add_argument("--output", default="results/demo", help="work directory (a rerun resumes it)")
    p.add_argument("--warp-steps", type=_positive_int, default=300)
    p.add_argument("--full-steps", type=_positive_int, default=300)
    p.add_argument("--persons", type=_positive_int, default=4, help="held-out persons to animate")
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
    try:
        args.run(args, overrides)
    except _user_errors() as e:
        message = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}"
        print(f"metaportrait-jax: error: {message or type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
