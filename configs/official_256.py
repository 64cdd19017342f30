"""The released MetaPortrait base model (256x256), exactly; loads the official checkpoint after conversion.

  metaportrait-jax summary --config configs/official_256.py
  metaportrait-jax convert official-base --checkpoint ckpt_base.pth.tar --output ckpt/official --config configs/official_256.py
  metaportrait-jax animate --checkpoint ckpt/official --official-data data/ --output results/official
"""

import ml_collections

from metaportrait_jax.models.config import generator_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    del variant
    config = ml_collections.ConfigDict()
    config.model = generator_config("official_256")
    config.seed = 365
    config.inference = ml_collections.ConfigDict(dict(batch_size=4, fps=23.98))
    return config
