"""A new loss term in pretraining: the full stage's generator loss plus an L1 pixel loss between prediction and
driving frame, with its own weight (`train.loss.pixel_l1`) and metric ("pixel_l1"). Registered as the task
"pixel_l1" and trained a few steps from a pretrained tiny model's warping network (a warp- or full-stage checkpoint).

  python examples/new_loss.py [--pretrained CHECKPOINT] [--steps 5] [--weight 10]
"""

import dataclasses
import os

import jax.numpy as jnp

import quick_pretrain
from metaportrait_jax import api


class PixelL1Trainer(api.Trainer):
    """Trainer whose full-stage generator loss gains `train.loss.pixel_l1` × mean |prediction − driving|."""

    def generator_losses(self, params, state, batch, mask_denominators=None):
        total, (named, out, mutated) = super().generator_losses(params, state, batch, mask_denominators)
        weight = self.train.loss.get("pixel_l1", 0.0)
        if self.stage == "full" and weight:
            # logged under its name with the other losses (the step logs every entry of `named`)
            named = {**named, "pixel_l1": weight * jnp.mean(jnp.abs(out["prediction"] - batch["driving"]))}
            total = total + named["pixel_l1"]
        return total, (named, out, mutated)


api.register_task("pixel_l1", dataclasses.replace(api.TASKS["generator"], trainer=PixelL1Trainer))


def main() -> None:
    parser = quick_pretrain.parser(__doc__, "full-stage training with the new loss", steps=5, seconds=0.0)
    parser.add_argument("--weight", type=float, default=10.0, help="train.loss.pixel_l1")
    args = quick_pretrain.parse_args(parser)
    pretrained = quick_pretrain.pretrained(args, stages=("warp",))  # the full stage takes only its warping network
    config = quick_pretrain.recipe("pretrain_full", args, args.steps)
    config.task = "pixel_l1"
    config.init_from = pretrained  # its warping network (config.init_modules) starts the full stage
    config.train.update(batch_size=2, learning_rate=1e-3, max_seconds=args.seconds)
    config.train.loss.pixel_l1 = args.weight  # a new field: ConfigDicts from load_config take them
    result = api.train(config, os.path.join(args.root, "new_loss"), progress=False)
    for row in result.history:
        print(f"step {row['step']}: pixel_l1 {row['pixel_l1']:.4f}, perceptual {row['perceptual']:.3f}, "
              f"generator_loss {row['generator_loss']:.3f}")
    print(f"model checkpoint: {result.export}")


if __name__ == "__main__":  # the data builder's worker processes import this file again
    main()
