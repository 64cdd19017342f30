"""A narrow 64x64 variant of the base model for tests and quick experiments.

  metaportrait-jax summary --config configs/tiny.py
"""

import ml_collections

from metaportrait_jax.models.config import generator_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    del variant
    config = ml_collections.ConfigDict()
    config.model = generator_config("tiny")
    config.seed = 0
    config.inference = ml_collections.ConfigDict(dict(batch_size=8, fps=23.98))
    return config
