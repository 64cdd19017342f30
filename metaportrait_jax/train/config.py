"""Defaults of the training sections of a config (`config.train`, `config.data`), shared by the config files."""

import ml_collections

from metaportrait_jax.models.config import generator_config

# model preset -> (synthetic data config, identity size): each preset trains on the synthetic set of its resolution.
VARIANTS = {"tiny": ("r64", 64), "official_256": ("r256", 256)}


def train_defaults(stage: str) -> ml_collections.ConfigDict:
    """The official optimisation settings (spec §3.2) for `stage` 'warp' or 'full'."""
    return ml_collections.ConfigDict(dict(
        stage=stage,
        steps=1000,
        batch_size=8,
        learning_rate=2e-4,
        warp_lr_scale=0.1,
        adam_betas=(0.5, 0.999),
        clip_norm=0.3,
        decay_steps=(750,),           # official: ×0.1 at epoch 45 of 60
        compute_dtype="float32",      # or "bfloat16": bf16 networks, fp32 parameters and losses
        pyramid_scales=(1.0, 0.5, 0.25, 0.125),
        perceptual="lpips_vgg16",     # offline default; "torchvision_vgg19:<path.pth>" is the official VGG19
        loss=dict(warp_perceptual=(10.0,) * 5, perceptual=(10.0,) * 5, eye=50.0, mouth=50.0, generator_gan=1.0,
                  feature_matching=(10.0,) * 4, discriminator_gan=1.0, identity=0.0),
        # "package.module:factory" returning (flax module, variables) that embed [B, H, W, 3] images in [0, 1] as
        # [B, model.id_dim]; used when loss.identity > 0 (official weight 20, but its loss code is disabled)
        identity_encoder="",
        fsdp=1,                       # devices per parameter shard (1 = plain data parallelism)
        log_every=10,
        image_every=100,
        checkpoint_every=100,
        keep_checkpoints=3,
    ))


def data_defaults(synthetic_config: str) -> ml_collections.ConfigDict:
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


def pretrain_config(stage: str, variant: str) -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    synthetic, id_dim = VARIANTS[variant]
    config = ml_collections.ConfigDict()
    config.model = generator_config(variant)
    config.model.id_dim = id_dim
    config.model.topology = "synthetic"  # the landmarks of the default data; set to the data's own otherwise
    config.seed = 365
    config.train = train_defaults(stage)
    config.data = data_defaults(synthetic)
    config.init_from = ""
    config.inference = ml_collections.ConfigDict(dict(batch_size=8, fps=23.98))
    if variant == "tiny":
        config.train.pyramid_scales = (1.0, 0.5, 0.25)  # relu5 of an 8² level would be empty
    return config
