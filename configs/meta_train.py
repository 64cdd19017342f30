"""Meta-training (official: Reptile) from a pretrained full-stage model.

  metaportrait-jax meta-train --config configs/meta_train.py:tiny --workdir runs/meta_tiny \
      --config.init_from=runs/full_tiny/export [--config.meta.algorithm=maml --config.train.adam_eps_root=1e-16]

`init_from` is a model checkpoint; its spectral norm is folded into plain weights on load (the official
`--remove_sn`), and the meta-trained model is written SN-free to `<workdir>/export`, which `personalize`, `animate`
and `evaluate` accept. Variants: `tiny` (64², 4 tasks per meta-batch) and `official_256` (the official settings).
"""

import ml_collections

from metaportrait_jax.train.config import meta_config


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    return meta_config(variant or "tiny")
