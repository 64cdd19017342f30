"""Temporal super-resolution (256² -> 512², the official spatial-temporal enhancement module) and its training.

  metaportrait-jax train --config configs/temporal_sr.py:tiny --workdir runs/sr_tiny
  metaportrait-jax convert official-sr --checkpoint temporal_gfpgan.pth --output ckpt/sr
  metaportrait-jax enhance --checkpoint ckpt/sr --input frames/ --output results/sr

Variants: `official_512` (default; the released network, trained on the synthetic r256_sr set unless
`data.*` says otherwise) and `tiny` (32² -> 64²). Start from GFPGAN v1.3 as the official training does:
`convert official-sr --checkpoint GFPGANv1.3.pth --output ckpt/gfpgan` then `--config.init_from=ckpt/gfpgan`.
"""

import ml_collections

from metaportrait_jax.train.config import temporal_sr_config


def get_config(variant: str = "official_512") -> ml_collections.ConfigDict:
    return temporal_sr_config(variant or "official_512")
