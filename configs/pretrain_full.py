"""Full-stage pretraining from a warp checkpoint: all losses, discriminator on (official Full stage).

  metaportrait-jax train --config configs/pretrain_full.py:tiny --workdir runs/full_tiny \
      --config.init_from=runs/warp_tiny/export

`init_from` is a model checkpoint (e.g. the `export/` that `train` writes at the end of a warp run); as in the
official code only its ladder and dense-motion weights are copied.
"""

import ml_collections

from metaportrait_jax.train.config import pretrain_config


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    return pretrain_config("full", variant or "tiny")
