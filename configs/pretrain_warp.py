"""Warp-stage pretraining: ladder encoder + dense motion network, warp perceptual loss only (official Warp stage).

  metaportrait-jax train --config configs/pretrain_warp.py:tiny --workdir runs/warp_tiny
  metaportrait-jax train --config configs/pretrain_warp.py:official_256 --workdir runs/warp \
      --config.data.source=layout --config.data.path=data/ --config.model.topology=dense669

Variants: `tiny` (64², synthetic r64) and `official_256` (the released architecture, synthetic r256).
"""

import ml_collections

from metaportrait_jax.train.config import pretrain_config


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    return pretrain_config("warp", variant or "tiny")
