"""Defaults shared by the recipes: the generator recipes' training section, the data section, the perceptual pyramid
and the variant tables. A recipe file sets every hyperparameter of its own (steps, batch size, learning rate,
schedule, changed loss weights, ...) on top of these."""

import ml_collections

from metaportrait_jax.config import ConfigError
from metaportrait_jax.models.config import generator_config

# model preset -> (synthetic data config, identity size): each preset trains on the synthetic set of its resolution.
VARIANTS = {"tiny": ("r64", 64), "official_256": ("r256", 256)}

# temporal SR preset -> synthetic data config rendered at the network's input size with a 2x target
SR_VARIANTS = {"tiny": "r32_sr", "official_512": "r256_sr"}


def pyramid_scales(image_size: int) -> tuple[float, ...]:
    """The perceptual loss's pyramid: the official four levels, or three below 128² (relu5 of an 8² level would be
    empty)."""
    return (1.0, 0.5, 0.25, 0.125) if image_size >= 128 else (1.0, 0.5, 0.25)


def variant_of(table: dict, variant: str) -> str:
    """`variant` checked against a recipe's variant table."""
    if variant not in table:
        raise ConfigError(f"unknown variant {variant!r}; expected one of {sorted(table)}")
    return variant


def generator_recipe(variant: str) -> ml_collections.ConfigDict:
    """What the generator recipes built on a model preset share besides hyperparameters: the `variant`
    architecture (models/config.py) sized for its synthetic data set, that data set, the training section's shared
    defaults (below), no `init_from`, and the inference section."""
    synthetic, id_dim = VARIANTS[variant_of(VARIANTS, variant)]
    config = ml_collections.ConfigDict()
    config.task = "generator"           # train/tasks.py: what trains (trainer, input pipeline, export)
    config.model = generator_config(variant)
    config.model.id_dim = id_dim
    config.model.topology = "synthetic"  # the landmarks of the default data; set to the data's own otherwise
    config.train = generator_train()
    config.data = data(synthetic)
    config.init_from = ""
    config.inference = ml_collections.ConfigDict(dict(batch_size=8, fps=23.98))
    return config


def generator_train() -> ml_collections.ConfigDict:
    """The training section of the generator recipes (pretraining, meta-training, personalisation) without the
    fields each recipe sets itself: the official optimiser (spec §3.2) and loss weights, and the run's mechanics."""
    return ml_collections.ConfigDict(dict(
        warp_lr_scale=0.1,            # the warping network's learning rate is this times train.learning_rate
        adam_betas=(0.5, 0.999),
        adam_eps_root=0.0,            # > 0 only to differentiate through Adam (second-order MAML)
        clip_norm=0.3,
        compute_dtype="float32",      # or "bfloat16": bf16 networks, fp32 parameters and losses; or "float64"
                                      # (JAX_ENABLE_X64=1): everything in float64, for exactness checks
        perceptual="lpips_vgg16",     # offline default; "torchvision_vgg19:<path.pth>" is the official VGG19
        loss=dict(warp_perceptual=(10.0,) * 5, perceptual=(10.0,) * 5, eye=50.0, mouth=50.0, generator_gan=1.0,
                  feature_matching=(10.0,) * 4, discriminator_gan=1.0, identity=0.0),
        # "package.module:factory" returning (flax module, variables) that embed [B, H, W, 3] images in [0, 1] as
        # [B, model.id_dim]; used when loss.identity > 0 (official weight 20, but its loss code is disabled)
        identity_encoder="",
        fsdp=1,                       # devices per parameter shard (1 = plain data parallelism)
        # "all_reduce", or "fixed_order": per-device gradients gathered and summed in device order, the same bits
        # on any process topology (train/sharding.py)
        gradient_reduction="all_reduce",
        log_every=10,
        image_every=100,
        checkpoint_every=100,
        keep_checkpoints=3,
        max_seconds=0.0,              # > 0: stop (after saving) this long after the first (compiling) step
    ))


def data(synthetic_config: str) -> ml_collections.ConfigDict:
    """Where pairs come from: `source` 'synthetic' (built on first use), 'tfds' (a built dir) or 'layout'.

    The landmark topology is the model's (`config.model.topology`): line images are drawn with it.
    """
    return ml_collections.ConfigDict(dict(
        source="synthetic",
        synthetic=synthetic_config,
        data_dir="data/tfds",         # synthetic: TFDS data dir to build into / read from
        path="",                      # tfds: a built data set directory; layout: the official-layout folder
        split="train",
        pair_source="clip",           # "clip": the clip's source frame (official); "random": any frame of the clip
        workers=2,
    ))
