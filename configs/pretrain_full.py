"""Full-stage pretraining from a warp checkpoint: all losses, discriminator on (official Full stage).

  metaportrait-jax train --config configs/pretrain_full.py:tiny --workdir runs/full_tiny \
      --config.init_from=runs/warp_tiny/export

`init_from` is a model checkpoint (e.g. the `export/` that `train` writes at the end of a warp run); as in the
official code only its ladder and dense-motion weights are copied (`init_modules`). The official stages share their
hyperparameters, so this recipe is configs/pretrain_warp.py's (variants, steps, batch size, learning rate, schedule;
configs/common.py's optimiser and loss weights) with the stage changed.
"""

import ml_collections

from configs import pretrain_warp


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    config = pretrain_warp.get_config(variant)
    config.train.stage = "full"
    return config
