"""Warp-stage pretraining: ladder encoder + dense motion network, warp perceptual loss only (official Warp stage).

  metaportrait-jax train --config configs/pretrain_warp.py:tiny --workdir runs/warp_tiny
  metaportrait-jax train --config configs/pretrain_warp.py:official_256 --workdir runs/warp \
      --config.data.source=layout --config.data.path=data/ --config.model.topology=dense669

Variants: `tiny` (64², synthetic r64) and `official_256` (the released architecture, synthetic r256). The optimiser,
loss weights and run mechanics are configs/common.py's `generator_train`; configs/pretrain_full.py (the full stage)
is this recipe with the stage changed.
"""

import ml_collections

from configs import common


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    config = common.generator_recipe(variant or "tiny")
    config.seed = 365
    # the official settings (spec §3.2); the decay: ×0.1 at epoch 45 of 60
    config.train.update(stage="warp", steps=1000, batch_size=8, learning_rate=2e-4, decay_steps=(750,),
                        pyramid_scales=common.pyramid_scales(config.model.image_size))
    # what a fresh run takes from `init_from`: the generator's top-level modules (official Full stage: the warping
    # network's two)
    config.init_modules = ("ladder_network", "dense_motion_network")
    return config
