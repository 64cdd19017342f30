"""Meta-training (official: Reptile) from a pretrained full-stage model.

  metaportrait-jax meta-train --config configs/meta_train.py:tiny --workdir runs/meta_tiny \
      --config.init_from=runs/full_tiny/export [--config.meta.algorithm=maml --config.train.adam_eps_root=1e-16]

`init_from` is a model checkpoint; its spectral norm is folded into plain weights on load (the official
`--remove_sn`), and the meta-trained model is written SN-free to `<workdir>/export`, which `personalize`, `animate`
and `evaluate` accept. Variants: `tiny` (64², 4 tasks per meta-batch) and `official_256` (the official settings,
spec §4: 1 task of 1 support pair, 2 inner steps, `PersonalMetaDataset` sampling).
"""

import ml_collections

from configs import common


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    variant = variant or "tiny"
    config = common.generator_recipe(variant)
    config.task = "meta"                # no init_modules: it starts from the whole (SN-folded) init_from model
    config.model.use_sn = False
    config.seed = 365
    # outer Adam at lr 2e-5 (warp ×0.1), ×0.1 after 2 of 5 epochs' worth of steps, clip 0.3, no GAN
    config.train.update(stage="full", steps=500, batch_size=8, learning_rate=2e-5, decay_steps=(200,),
                        checkpoint_every=100, pyramid_scales=common.pyramid_scales(config.model.image_size))
    config.train.loss.generator_gan = 0.0
    config.train.loss.feature_matching = (0.0,) * len(config.train.loss.feature_matching)
    official = variant == "official_256"  # tiny: 4 tasks of 4 support and 4 query pairs from different clips
    config.meta = ml_collections.ConfigDict(dict(
        algorithm="reptile",          # "reptile" (official) | "fomaml" | "maml" (second order)
        tasks=1 if official else 4,   # tasks per meta-batch (split over the mesh's devices)
        task_batching="vmap",         # a device's tasks: "vmap" (one batched program) | "map" (one after another)
        support=1 if official else 4,
        query=1 if official else 4,   # unused by reptile
        episode_sampling="official" if official else "clips",
        inner_steps=2,
        inner_learning_rate=2e-4,     # warping network ×train.warp_lr_scale, like pretraining
        maml_programs="per_inner_step",  # maml: "per_inner_step" (small programs) | "one" (jax.grad through adapt)
        remat=False,                  # maml_programs="one": jax.checkpoint per inner step (memory of one step)
        # False: the inner loop as a rolled lax.scan, which compiles one inner step instead of all and runs slower:
        # the better trade only for runs of a few meta-steps (README, Tests)
        unroll_inner_loop=True,
    ))
    return config
