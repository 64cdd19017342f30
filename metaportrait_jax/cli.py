"""`metaportrait-jax`: a thin parser over `metaportrait_jax.api`; each subcommand calls one API function and prints
what it made. `--config.a.b=value` overrides a config field. User mistakes (`UserError`, bad paths) end with a
one-line `metaportrait-jax: error: ...` and exit status 2, without a traceback."""

import argparse
import inspect
import os
import sys
import traceback
from collections.abc import Sequence

from metaportrait_jax import api  # its names load on first use: parsing stays fast
from metaportrait_jax.config import REPO_CONFIGS, load_config
from metaportrait_jax.errors import UserError

TAKES_OVERRIDES = ("summary", "convert", "train", "meta-train", "benchmark", "demo")
# OS errors a user's path causes; any other exception is a bug and keeps its traceback
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, PermissionError)


def run_command(args: argparse.Namespace, overrides: Sequence[str]) -> None:
    """Calls the API function of `args.command` (flags passed by parameter name) and prints what it made."""
    command = args.command
    if overrides and command not in TAKES_OVERRIDES:
        raise UserError(f"{command} takes no --config.* overrides (its settings are flags or its checkpoint's)")
    if command == "summary":
        print(api.summarize(load_config(args.config, overrides), args.config))
    elif command == "convert":
        default = "official_256.py" if args.what == "official-base" else "temporal_sr.py"
        config = load_config(args.config or os.path.join(REPO_CONFIGS, default), overrides)
        if _call(api.convert, args, config=config).fresh_temporal_windows:
            print("no temporal windows in the checkpoint (GFPGAN v1.3): they start afresh, as in official training")
        print(f"wrote {args.output}")
    elif command == "enhance":
        print(f"wrote frames and {api.enhance(args.checkpoint, args.input, args.output, args.chunk)}")
    elif command == "animate":
        animate(args)
    elif command == "evaluate":
        report = _call(api.evaluate, args, face_metrics=not args.no_face_metrics)
        print(f"{api.markdown_report(report)}\nwrote {args.output}/metrics.json, metrics.md and sample grids")
    elif command == "preprocess":
        done = _call(api.preprocess_videos, args, input_path=args.input, tfds_dir=args.tfds)
        print(api.format_report(done.report))
        if done.tfds_dir:
            print(f"talking_head_videos data set: {done.tfds_dir}")
    elif command == "data":
        print(f"data set ready: {_call(api.build_data, args, synthetic=args.config)}")
    elif command in ("train", "meta-train"):
        _call(api.initialize_processes, args)  # joins the multi-process job the flags or variables describe
        result = _call(api.train, args, config=load_config(args.config, overrides))  # its `task` says what trains
        print(f"trained {result.steps} steps; model checkpoint: {result.export}" if result.export else
              f"stopped early; rerun the same command to resume from {args.workdir}")
    elif command == "personalize":
        result = _call(api.personalize, args)
        if result.export and result.history:
            first, last = result.history[0], result.history[-1]
            print(f"personalised {last['step']} steps in {last['elapsed_seconds']:.1f} s: loss "
                  f"{first['generator_loss']:.4f} -> {last['generator_loss']:.4f} (each step: run/metrics.jsonl)")
        print(f"personalised model checkpoint: {result.export}" if result.export else
              f"stopped early; rerun the same command to resume from {args.output}")
    elif command == "export":
        done = _call(api.export, args)
        print(f"wrote {done.output} ({done.bytes / 2 ** 20:.1f} MiB; {', '.join(done.platforms)}; batch "
              f"{done.batch_size}; {done.seconds:.1f} s)")
    elif command == "benchmark":
        _call(api.adaptation_benchmark, args, config=load_config(args.config, overrides))
    elif command == "demo":
        _call(api.demo, args, settings=_call(api.DemoSettings, args), overrides=overrides)
    elif command == "doctor":
        print(api.doctor().format())


def _call(function, args: argparse.Namespace, **given):
    """`function` called with `given` and, for its other parameters, the flags of the same name that were set
    (`progress` is `not --no-progress`): flags left unset keep the API's defaults."""
    flags = dict(vars(args), progress=not getattr(args, "no_progress", False))
    names = inspect.signature(function).parameters
    return function(**{k: v for k, v in flags.items() if k in names and k not in given and v is not None}, **given)


def animate(args: argparse.Namespace) -> None:
    if bool(args.official_data) == bool(args.source or args.driving):
        raise UserError("animate needs either --source PHOTO --driving VIDEO or --official-data DATA")
    raw_only = [flag for flag in ("side_by_side", "max_frames", "motion") if getattr(args, flag)]
    if args.official_data:
        if raw_only:
            raise UserError(f"{', '.join('--' + f.replace('_', '-') for f in raw_only)} apply to --source/--driving "
                            "animation, not --official-data")
        for video in api.animate_official(args.checkpoint, args.official_data, args.output, args.batch_size, args.sr):
            print(f"wrote frames and {video}")
        return
    if not (args.source and args.driving):
        raise UserError("animate needs both --source PHOTO and --driving VIDEO")
    report = _call(api.animate, args)
    missing = report.driving_frames_without_face
    if missing:
        print(f"warning: {len(missing)} driving frames had no face landmarks ({', '.join(map(str, missing[:10]))}"
              f"{', ...' if len(missing) > 10 else ''}); they reuse the nearest earlier frame's", file=sys.stderr)
    print(f"wrote {report.output} ({report.frames} frames at {report.fps:g} fps)")


def _positive_int(text: str) -> int:
    if int(text) <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return int(text)


def _index_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaportrait-jax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="parameters per sub-network and GMACs per frame")
    p.add_argument("--config", default=os.path.join(REPO_CONFIGS, "official_256.py"))

    p = sub.add_parser("convert", help="convert official PyTorch checkpoints (read without executing pickled code)")
    p.add_argument("what", choices=["official-base", "official-sr"], help="ckpt_base.pth.tar; temporal_gfpgan.pth")
    p.add_argument("--checkpoint", required=True, help="the .pth file")
    p.add_argument("--output", required=True, help="new directory for the Orbax checkpoint and config.json")
    p.add_argument("--config", help="default: configs/official_256.py (base) or configs/temporal_sr.py (sr)")
    p.add_argument("--key", help="official-sr: the state dict's entry (default: params, else params_ema)")

    p = sub.add_parser("enhance", help="temporal super-resolution of a clip (2x, seamless over long videos)")
    p.add_argument("--checkpoint", required=True, help="a temporal SR model checkpoint")
    p.add_argument("--input", required=True, help="a folder of frames (name order) or an mp4")
    p.add_argument("--output", required=True, help="OUT/<frame name> and OUT/out_<size>.mp4 go here")
    p.add_argument("--chunk", type=_positive_int, help="output frames per compiled step (default: the config's)")

    p = sub.add_parser("animate", help="animate a portrait photo with a driving video, or official-layout data")
    p.add_argument("--checkpoint", required=True, help="a model checkpoint: pretrained, converted or personalised")
    p.add_argument("--source", metavar="PHOTO", help="portrait photo, any size (the face is found and cropped)")
    p.add_argument("--driving", metavar="VIDEO", help="video whose face motion drives the photo")
    p.add_argument("--official-data", help="a folder in the official inference layout (self-reconstruction)")
    p.add_argument("--output", required=True, help="OUT.mp4 with --source/--driving; a folder with --official-data")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--motion", choices=["relative", "absolute"], help="relative (default): the photo's landmarks "
                   "moved as the driving face moves; absolute: the driving landmarks as they are (same person)")
    p.add_argument("--side-by-side", action="store_true", help="write source | driving | result")
    p.add_argument("--max-frames", type=_positive_int, help="animate only the first N driving frames")
    p.add_argument("--sr", metavar="DIR", help="a temporal SR checkpoint doubles the size (--official-data: OUT/sr_*/)")

    p = sub.add_parser("export", help="the animation forward with its weights as one file (jax.export; runs "
                       "without Flax or this package: examples/run_exported.py)")
    p.add_argument("--checkpoint", required=True, help="a generator model checkpoint")
    p.add_argument("--output", required=True, help="the artifact to write (.npz)")
    p.add_argument("--batch", type=_positive_int, help="frames per call (default: the checkpoint's inference batch)")
    p.add_argument("--platforms", type=lambda t: t.split(","), help="default cpu,cuda,tpu (one artifact for all)")

    p = sub.add_parser("evaluate", help="self-reconstruction and cross-identity metrics (JSON and Markdown)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="a TFDS frame data set (its folder) or an official-layout folder")
    p.add_argument("--split", default="test", help="TFDS split (default test)")
    p.add_argument("--output", required=True, help="folder for metrics.json, metrics.md and sample grids")
    p.add_argument("--max-persons", type=_positive_int, help="evaluate the first N persons")
    p.add_argument("--max-frames", type=_positive_int, help="driving frames per person (default all)")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--fid-weights", metavar="PTH", help="Inception-v3 state dict for FID: pytorch-fid's "
                   "pt_inception-2015-12-05-6726825d.pth (FID as published) or torchvision's inception_v3_google")
    p.add_argument("--fid-variant", choices=["pytorch_fid", "torchvision"], help="default: told by the fc size")
    p.add_argument("--no-face-metrics", action="store_true", help="skip CSIM, AED, AKD and MKR (dlib, MediaPipe)")

    p = sub.add_parser("preprocess", help="face crops, MediaPipe landmarks and dlib identities from real videos")
    p.add_argument("--input", required=True, help="a video, a folder of frames (one clip) or a folder of those")
    p.add_argument("--output", required=True, help="output root in the official layout (a rerun resumes it)")
    p.add_argument("--size", type=_positive_int, default=256, help="side of the square face crops in pixels")
    p.add_argument("--tfds", metavar="DATA_DIR", help="also build a talking_head_videos TFDS data set there")

    p = sub.add_parser("data", help="build a TFDS data set (array_record) of frames for the input pipelines")
    p.add_argument("what", choices=["synthetic", "layout"], help="procedural talking heads or an official layout")
    p.add_argument("--data-dir", required=True, help="TFDS data directory to build into")
    p.add_argument("--config", default="r64", help="synthetic: r64, r128, r256, r64_tiny, r64_large, r256_large")
    p.add_argument("--root", help="layout: the official-layout folder (e.g. `preprocess` output)")
    p.add_argument("--topology", default="mediapipe478", help="layout: landmark topology of its *_ldmk.npy files")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--id-dim", type=int, default=128, help="layout: size of the src_<k>_id.npy embeddings")
    p.add_argument("--test-persons", type=int, default=0, help="layout: the last N clips form the test split")

    for name, what in (("train", "train what the config's task names: pretraining, meta-learning, temporal SR "
                                 "(resumes)"),
                       ("meta-train", "the same as train (the name of the meta-learning step in the paper)")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--config", required=True, help="e.g. configs/pretrain_warp.py:tiny, configs/meta_train.py")
        p.add_argument("--workdir", required=True, help="checkpoints, logs and the final export go here")
        group = p.add_argument_group("multi-process jobs (else METAPORTRAIT_* variables, SLURM or a JobSet)")
        group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordination service")
        group.add_argument("--num-processes", type=_positive_int, metavar="N", help="processes in the job")
        group.add_argument("--process-id", type=int, metavar="I", help="this process's id, 0 .. N-1")

    p = sub.add_parser("personalize", help="fine-tune a model on one person (resumes from --output)")
    p.add_argument("--checkpoint", required=True, help="a model checkpoint (pretrained, meta-trained, ...)")
    p.add_argument("--data", required=True, help="the person's data: a TFDS data set dir or an official-layout folder")
    p.add_argument("--split", default="test", help="TFDS split")
    p.add_argument("--person", type=int, help="person index (needed when the data holds several)")
    p.add_argument("--clips", type=_index_list, help="the person's clips to learn from, e.g. 0 or 0,2 (default all)")
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--seconds", type=float, help="wall time instead of --steps (from the first, compiling, step on)")
    p.add_argument("--output", required=True, help="directory for the personalised model checkpoint (and run/)")
    p.add_argument("--batch-size", type=_positive_int, default=4)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("benchmark", help="adaptation: personalisation curves of pretrained vs meta-trained starts")
    p.add_argument("what", choices=["adaptation"])
    p.add_argument("--config", required=True, help="a meta-training config, e.g. configs/meta_train.py:tiny")
    p.add_argument("--pretrained", required=True, help="the standard pretrained model checkpoint (full stage)")
    p.add_argument("--workdir", required=True, help="meta-training runs and the report (a rerun resumes)")
    p.add_argument("--algorithms", type=lambda t: t.split(","), default=["reptile", "fomaml", "maml"])
    p.add_argument("--seconds-per-algorithm", type=float, default=600.0, help="wall time after the compiling step")
    p.add_argument("--meta-steps", type=_positive_int, default=10 ** 6, help="step cap per algorithm")
    p.add_argument("--persons", type=_positive_int, default=8, help="held-out persons")
    p.add_argument("--batch-size", type=_positive_int, default=4, help="personalisation batch")

    p = sub.add_parser("demo", help="end to end on the synthetic data: build, pretrain, meta-train, personalise")
    p.add_argument("--output", default="results/demo", help="work directory (a rerun resumes it)")
    for field in ("warp_steps", "full_steps", "meta_steps", "meta_tasks", "personalize_steps", "persons",
                  "batch_size"):  # api.DemoSettings (not imported here: --help stays fast)
        p.add_argument(f"--{field.replace('_', '-')}", type=_positive_int, help="default: see api.DemoSettings")
    p.add_argument("--seed", type=int, help="default: see api.DemoSettings")
    p.add_argument("--from-scratch", action="store_true",
                   help="train the starts here (warp, full, meta steps) instead of using pretrained/'s")

    sub.add_parser("doctor", help="backend, devices, package versions and XLA flags; warns of a CPU fallback")
    for name in ("evaluate", "train", "meta-train", "personalize", "benchmark"):
        sub.choices[name].add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
    try:
        run_command(args, overrides)
    except USER_ERRORS as e:
        message = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}"
        print(f"metaportrait-jax: error: {message or type(e).__name__}", file=sys.stderr)
        _leave_failed_job(2)
        return 2
    except Exception:
        _leave_failed_job(1, traceback.print_exc)
        raise
    return 0


def _leave_failed_job(status: int, report=lambda: None) -> None:
    """In a multi-process job, reports and exits now rather than wait at exit for processes that may be waiting for
    this one (outside one: nothing; without JAX imported, nothing joined a job)."""
    if "jax" in sys.modules:
        from metaportrait_jax.train.distributed import abandon_job, in_multiprocess_job

        if in_multiprocess_job():
            report()
            abandon_job(status)


if __name__ == "__main__":
    sys.exit(main())
