"""Ships a trained generator into pretrained/<name>: its export, its run's metrics.jsonl and loss plot, and its
one-shot PSNR on each held-out person of the examples' data (which tests/test_examples.py reproduces). The demo
personalises from pretrained/base, pretrained/control and pretrained/meta (pretrained/README.md: their commands).

  python examples/ship_starts.py --run runs/pretrained/meta --name meta
"""

import argparse
import os
import shutil

import quick_pretrain
from metaportrait_jax import api
from metaportrait_jax.config import REPO_PRETRAINED
from metaportrait_jax.train.checkpoint import save_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished training run's work directory (its export/)")
    parser.add_argument("--name", required=True, help="the folder in pretrained/")
    parser.add_argument("--root", default="runs/examples", help="the examples' data/ (built on first use)")
    args = parser.parse_args()
    target = os.path.join(REPO_PRETRAINED, args.name)
    if os.path.exists(target):
        raise SystemExit(f"{target} exists; move it away to ship a new one")
    config, variables, _ = api.load_model(os.path.join(args.run, "export"))
    save_model(target, config, variables, network="generator")  # the generator alone: no discriminator
    log = shutil.copy(os.path.join(args.run, "metrics.jsonl"), os.path.join(target, "metrics.jsonl"))
    api.plot_losses({args.name: log}, os.path.join(target, "losses.png"))
    one_shot = quick_pretrain.record_one_shot_psnr(target, args)
    print(f"shipped {target}; one-shot PSNR (dB) by held-out person: {one_shot}")


if __name__ == "__main__":
    main()
