"""Personalisation: fine-tuning one person's model with the meta inner loop's recipe (Adam(0.5, 0.999), warping
network ×0.1, clip 0.3, generator losses without GAN, no schedule).

  metaportrait-jax personalize --checkpoint runs/meta/export --data data/persons --person 3 --steps 30 \
      --output runs/me [--seconds 30 instead of --steps] [--batch-size 4 --learning-rate 2e-4 --seed 0]

Not a `train --config` file: `api.personalize` (and the adaptation curves) load it with the variant the checkpoint's
image size, e.g. `personalize.py:64` (the perceptual pyramid depends on it), put the checkpoint's model in the
placeholder `model` section and set `train.steps` (a placeholder: the command's --steps, or 10⁹ with --seconds),
`train.max_seconds`, `train.batch_size`, `train.learning_rate` and `seed` from their arguments; the values here are
the command's defaults.
"""

import ml_collections
from ml_collections import config_dict

from configs import common
from metaportrait_jax.config import ConfigError


def get_config(variant: str = "256") -> ml_collections.ConfigDict:
    if not (variant or "256").isdigit():
        raise ConfigError(f"personalize.py: the variant is the model's image size, got {variant!r}")
    image_size = int(variant or "256")
    config = ml_collections.ConfigDict()
    config.task = "generator"
    config.model = ml_collections.ConfigDict(dict(image_size=image_size))  # placeholder: the checkpoint's model
    config.seed = 0
    config.train = common.generator_train()
    config.train.update(stage="full", steps=config_dict.placeholder(int), batch_size=4, learning_rate=2e-4,
                        decay_steps=(), log_every=1, image_every=0, checkpoint_every=25,
                        pyramid_scales=common.pyramid_scales(image_size))
    config.train.loss.generator_gan = 0.0
    config.train.loss.feature_matching = (0.0,) * len(config.train.loss.feature_matching)
    config.data = common.data("")     # unused: the person's frames are the caller's
    config.init_from = ""             # the model to personalise
    config.init_modules = ("ladder_network", "dense_motion_network", "feature_encoder", "fuse_high_res", "SPDAE_G")
    config.inference = ml_collections.ConfigDict(dict(batch_size=8, fps=23.98))
    return config
