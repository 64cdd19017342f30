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
    if not args.official_data:
        raise _UsageError("animate needs --official-data DATA (raw photo/video input is not available yet)")
    video = animate_official(args.checkpoint, args.official_data, args.output, args.batch_size)
    print(f"wrote frames and {video}")


def cmd_preprocess(args, overrides):
    from metaportrait_jax.data.preprocess import format_report, preprocess

    if overrides:
        raise _UsageError("preprocess takes no --config.* overrides")
    report = preprocess(args.input, args.output, args.size)
    print(format_report(report))


def cmd_demo(args, overrides):
    """The inference pipeline end to end on generated inputs (a trained demo needs the training stages)."""
    import shutil

    import jax

    from metaportrait_jax.data.official_layout import write_sample_layout
    from metaportrait_jax.eval.animate import animate_official
    from metaportrait_jax.models.generator import Generator, dummy_batch
    from metaportrait_jax.models.summary import format_summary, model_summary
    from metaportrait_jax.train.checkpoint import save_model

    official = _load_config(os.path.join(REPO_CONFIGS, "official_256.py"), ())
    print(format_summary(model_summary(official.model), "official_256 (the released architecture)"))
    config = _load_config(args.config, overrides)
    out = os.path.abspath(args.output)
    if os.path.exists(out):
        shutil.rmtree(out)  # the demo's own folder: a rerun starts clean
    data = os.path.join(out, "data")
    write_sample_layout(data, (4, 4), config.model.image_size, config.model.id_dim, seed=config.seed)
    variables = Generator(config.model).init(jax.random.key(config.seed), dummy_batch(config.model))
    save_model(os.path.join(out, "checkpoint"), config, variables)
    video = animate_official(os.path.join(out, "checkpoint"), data, os.path.join(out, "frames"))
    print(f"demo outputs in {out}: data/ (official layout), checkpoint/ (Orbax + config.json), frames/ and {video}")


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

    p = sub.add_parser("animate", help="generate frames from a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--official-data", help="a folder in the official inference layout (self-reconstruction)")
    p.add_argument("--output", required=True)
    p.add_argument("--batch-size", type=int)
    p.set_defaults(run=cmd_animate)

    p = sub.add_parser("preprocess", help="face crops, MediaPipe landmarks and dlib identities from real videos")
    p.add_argument("--input", required=True,
                   help="a video, a folder of frame images (one clip), or a folder of videos and frame folders")
    p.add_argument("--output", required=True, help="output root in the official layout (a rerun resumes it)")
    p.add_argument("--size", type=_positive_int, default=256, help="side of the square face crops in pixels")
    p.set_defaults(run=cmd_preprocess)

    p = sub.add_parser("demo", help="run the pipeline end to end on generated inputs")
    p.add_argument("--config", default=os.path.join(REPO_CONFIGS, "tiny.py"))
    p.add_argument("--output", default="results/demo")
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
