"""What the examples share: their data (the small synthetic set) and their start model, a tiny generator: the one
shipped in pretrained/base/ (trained by this file, see pretrained/README.md), `--pretrained`, or with `--pretrain` one
pretrained here. Every stage resumes, so a second example (or a rerun) reuses what the first one trained.

  python examples/quick_pretrain.py --pretrain-steps 200 --root runs/start_model   # writes pretrained/base
"""

import argparse
import json
import os
import shutil

import jax

from metaportrait_jax import api
from metaportrait_jax.config import load_config
from metaportrait_jax.train.checkpoint import save_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = "r64_tiny"  # 4 training and 2 held-out persons, 2 clips of 8 frames each: built in seconds
START_MODEL = os.path.join(REPO, "pretrained", "base")  # the shipped start model (generator only)


def parser(doc: str, what: str, steps: int, seconds: float | None) -> argparse.ArgumentParser:
    """An example's command line (its docstring as the help) with its budget: --steps and --seconds of `what`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=steps, help=f"{what} steps")
    parser.add_argument("--seconds", type=float, default=seconds, help=f"{what} wall time at the most")
    return parser


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The example's flags plus --pretrained, --pretrain-steps and --root (the folder of the data, the pretrained
    model, the examples' runs and their compiled programs)."""
    parser.add_argument("--pretrained", help="a tiny generator checkpoint (default: pretrained/base)")
    parser.add_argument("--pretrain", action="store_true", help="pretrain the start model here instead")
    parser.add_argument("--pretrain-steps", type=int, default=10, help="per stage (warp, full) with --pretrain")
    parser.add_argument("--root", default="runs/examples", help="data/, pretrained/ and the examples' runs")
    args = parser.parse_args()
    # Compiling dominates these short runs, and the examples share programs (model init, the forward, the
    # personalisation step): keep them on disk for the next example or rerun (unless the caller chose a cache).
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.path.join(args.root, "jax_cache")))
    return args


def data(args: argparse.Namespace) -> str:
    """The synthetic data set's directory (built on first use)."""
    return api.build_data("synthetic", os.path.join(args.root, "data"), synthetic=SYNTHETIC)


def recipe(name: str, args: argparse.Namespace, steps: int):
    """configs/<name>.py:tiny on the examples' data for `steps` steps: every step logged, no images, no checkpoint
    on the way (the last step saves one)."""
    config = load_config(os.path.join(REPO, "configs", f"{name}.py:tiny"))
    config.data.update(data_dir=os.path.join(args.root, "data"), synthetic=SYNTHETIC)
    config.train.update(steps=steps, decay_steps=(), image_every=0, checkpoint_every=10 ** 6, log_every=1)
    return config


def pretrained(args: argparse.Namespace, stages: tuple[str, ...] = ("warp", "full")) -> str:
    """`--pretrained`, else the shipped start model, else (or with `--pretrain`) the last of `stages` (warp, then
    full) pretrained `--pretrain-steps` each in `<root>/pretrained`."""
    if args.pretrained:
        return args.pretrained
    if not args.pretrain and os.path.exists(os.path.join(START_MODEL, "config.json")):
        return START_MODEL
    data(args)
    start = ""
    for stage in stages:
        config = recipe(f"pretrain_{stage}", args, args.pretrain_steps)
        # 5x the official rates and no GAN: a few CPU steps then show something, and compile fast
        config.train.update(batch_size=2, learning_rate=1e-3, max_seconds=0.0)
        config.train.loss.generator_gan = 0.0
        config.train.loss.feature_matching = (0.0,) * len(config.train.loss.feature_matching)
        config.init_from = start
        start = api.train(config, os.path.join(args.root, "pretrained", stage), progress=False).export
        if start is None:
            raise SystemExit("stopped early; run the same command again to resume")
    return start


def record_one_shot_psnr(model: str, args: argparse.Namespace) -> dict[str, float]:
    """Mean PSNR (dB) of `api.reenact` on each held-out person's second clip driving its first clip's source frame,
    written to `<model>/one_shot_psnr.json` (tests/test_examples.py reproduces it)."""
    one_shot = {}
    for person in (0, 1):
        shown = api.reenact(model, data(args), os.path.join(args.root, f"one_shot_{person}.mp4"), person=person,
                            source_clip=0, driving_clip=1)
        one_shot[str(person)] = shown.psnr
    with open(os.path.join(model, "one_shot_psnr.json"), "w") as f:
        json.dump(one_shot, f, indent=1)
    return one_shot


def main() -> None:
    """Pretrains (warp, then full stage) and writes the generator alone to pretrained/base, with both stages'
    metrics.jsonl, their loss plot and the one-shot PSNR on each held-out person's second clip."""
    args = parse_args(argparse.ArgumentParser(description=__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    args.pretrain = True
    if args.pretrained:
        raise SystemExit("quick_pretrain.py trains the start model itself: --pretrained does not apply")
    if os.path.exists(START_MODEL):
        raise SystemExit(f"{START_MODEL} exists; move it away to train a new one")
    config, variables, _ = api.load_model(pretrained(args))
    save_model(START_MODEL, config, variables, network="generator")
    logs = {}
    for stage in ("warp", "full"):
        logs[stage] = shutil.copy(os.path.join(args.root, "pretrained", stage, "metrics.jsonl"),
                                  os.path.join(START_MODEL, f"{stage}_metrics.jsonl"))
    api.plot_losses(logs, os.path.join(START_MODEL, "losses.png"))
    one_shot = record_one_shot_psnr(START_MODEL, args)
    print(f"start model: {START_MODEL}; one-shot PSNR (dB) by held-out person: {one_shot}")


if __name__ == "__main__":
    main()
