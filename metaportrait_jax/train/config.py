"""Defaults of the training sections of a config (`config.train`, `config.data`), shared by the config files."""

import ml_collections

from metaportrait_jax.models.config import generator_config

# model preset -> (synthetic data config, identity size): each preset trains on the synthetic set of its resolution.
VARIANTS = {"tiny": ("r64", 64), "official_256": ("r256", 256)}


def pyramid_scales(image_size: int) -> tuple[float, ...]:
    """The perceptual loss's pyramid: the official four levels, or three below 128² (relu5 of an 8² level would be
    empty)."""
    return (1.0, 0.5, 0.25, 0.125) if image_size >= 128 else (1.0, 0.5, 0.25)


def train_defaults(stage: str) -> ml_collections.ConfigDict:
    """The official optimisation settings (spec §3.2) for `stage` 'warp' or 'full'."""
    return ml_collections.ConfigDict(dict(
        stage=stage,
        steps=1000,
        batch_size=8,
        learning_rate=2e-4,
        warp_lr_scale=0.1,
        adam_betas=(0.5, 0.999),
        adam_eps_root=0.0,            # > 0 only to differentiate through Adam (second-order MAML)
        clip_norm=0.3,
        decay_steps=(750,),           # official: ×0.1 at epoch 45 of 60
        compute_dtype="float32",      # or "bfloat16": bf16 networks, fp32 parameters and losses; or "float64"
                                      # (JAX_ENABLE_X64=1): everything in float64, for exactness checks
        pyramid_scales=(1.0, 0.5, 0.25, 0.125),
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
    config.task = "generator"           # train/tasks.py: what trains (trainer, input pipeline, export)
    config.model = generator_config(variant)
    config.model.id_dim = id_dim
    config.model.topology = "synthetic"  # the landmarks of the default data; set to the data's own otherwise
    config.seed = 365
    config.train = train_defaults(stage)
    config.data = data_defaults(synthetic)
    config.init_from = ""
    # what a fresh run takes from `init_from`: the generator's top-level modules (official Full stage: the warping
    # network's two)
    config.init_modules = ("ladder_network", "dense_motion_network")
    config.inference = ml_collections.ConfigDict(dict(batch_size=8, fps=23.98))
    config.train.pyramid_scales = pyramid_scales(config.model.image_size)
    return config


def meta_defaults(variant: str) -> ml_collections.ConfigDict:
    """The meta section. `official_256`: the official defaults (spec §4: 1 task of 1 support pair, 2 inner steps,
    `PersonalMetaDataset` sampling); `tiny`: 4 tasks of 4 support and 4 query pairs from different clips."""
    official = variant == "official_256"
    return ml_collections.ConfigDict(dict(
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
    ))


def meta_config(variant: str) -> ml_collections.ConfigDict:
    """Meta-training from a pretrained model (`init_from`, spectral norm folded on load): outer Adam at lr 2e-5
    (warp ×0.1), ×0.1 after 2 of 5 epochs' worth of steps, clip 0.3, no GAN; the meta section above."""
    config = pretrain_config("full", variant)
    config.task = "meta"
    del config.init_modules             # meta-training starts from the whole (SN-folded) init_from model
    config.model.use_sn = False
    config.train.learning_rate = 2e-5
    config.train.steps = 500
    config.train.decay_steps = (200,)
    config.train.loss.generator_gan = 0.0
    config.train.loss.feature_matching = (0.0,) * len(config.train.loss.feature_matching)
    config.train.checkpoint_every = 100
    config.meta = meta_defaults(variant)
    return config


def personalization_config(model: ml_collections.ConfigDict, steps: int, seconds: float, batch_size: int,
                           learning_rate: float = 2e-4, seed: int = 0) -> ml_collections.ConfigDict:
    """Fine-tuning one person's model: the meta inner loop's recipe (Adam(0.5, 0.999) at `learning_rate`, warping
    network ×0.1, clip 0.3, generator losses without GAN, no schedule) for `steps` steps or `seconds` of wall time."""
    config = ml_collections.ConfigDict()
    config.task = "generator"
    config.model = model
    config.seed = seed
    config.train = train_defaults("full")
    train = config.train
    train.steps, train.max_seconds, train.batch_size = steps, float(seconds), batch_size
    train.learning_rate, train.decay_steps = learning_rate, ()
    train.loss.generator_gan = 0.0
    train.loss.feature_matching = (0.0,) * len(train.loss.feature_matching)
    train.log_every, train.image_every, train.checkpoint_every = 1, 0, 25
    train.pyramid_scales = pyramid_scales(model.image_size)
    config.data = data_defaults("")
    config.init_from = ""                # the model to personalise
    config.init_modules = ("ladder_network", "dense_motion_network", "feature_encoder", "fuse_high_res", "SPDAE_G")
    config.inference = ml_collections.ConfigDict(dict(batch_size=8, fps=23.98))
    return config


# temporal SR preset -> synthetic data config rendered at the network's input size with a 2x target
SR_VARIANTS = {"tiny": "r32_sr", "official_512": "r256_sr"}


def temporal_sr_config(variant: str) -> ml_collections.ConfigDict:
    """Training (and inference) settings of the temporal SR network (spec `temporal_sr_model.md` §5)."""
    from metaportrait_jax.models.config import temporal_sr_config as sr_model_config

    if variant not in SR_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(SR_VARIANTS)}")
    config = ml_collections.ConfigDict()
    config.task = "temporal_sr"
    config.model = sr_model_config(variant)
    config.seed = 0
    config.train = ml_collections.ConfigDict(dict(
        steps=300_000,
        batch_size=1,                 # clips per step (official: 1 per GPU)
        clip_length=6,                # frames per clip
        learning_rate=1e-4,
        final_learning_rate=1e-7,     # cosine decay over `steps` down to this (official CosineAnnealingRestartLR)
        adam_betas=(0.9, 0.99),
        ema_decay=0.999,
        freeze_decoder=True,          # official: the StyleGAN2 decoder keeps its (GFPGAN v1.3) weights
        flip_probability=0.5,         # horizontal flip of a whole training clip (input and target alike)
        compute_dtype="float32",
        perceptual="lpips_vgg16",     # offline default; "torchvision_vgg19:<vgg19-dcbb9e9d.pth>" is the official
        loss=dict(pixel=0.1, perceptual=1.0, style=50.0, layer_weights=(0.1, 0.1, 1.0, 1.0, 1.0),
                  range_norm=True),   # official quirk: the VGG sees (x + 1) / 2 of images already in [0, 1]
        fsdp=1,
        max_seconds=0.0,              # > 0: stop (after saving) this long after the first (compiling) step
        log_every=10,
        image_every=100,
        checkpoint_every=500,
        keep_checkpoints=3,
    ))
    config.data = data_defaults(SR_VARIANTS[variant])
    # Where the low-resolution inputs come from: "render" (the synthetic set's own low-resolution frame) or
    # "base_model" (the base model's output driven by the clip's frames, as the official training pairs them;
    # needs `base_checkpoint`, a base model checkpoint whose image size is the input size).
    config.data.input_source = "render"
    config.data.base_checkpoint = ""
    config.init_from = ""             # a temporal SR model checkpoint to start from (e.g. converted GFPGAN v1.3)
    # Output frames per step of seamless long-video inference: more frames amortise the ±temporal_depth context
    # (official_512: 1297 / 1068 / 954 GFLOP per frame at 16 / 32 / 64) but hold more 512² activations at once.
    config.inference = ml_collections.ConfigDict(dict(chunk_frames=16, fps=25.0))
    if variant == "tiny":
        # No pretrained GFPGAN exists at this size, and a frozen random decoder cannot learn: train it too.
        config.train.update(steps=200, batch_size=8, clip_length=3, learning_rate=1e-3, final_learning_rate=1e-5,
                            ema_decay=0.99, checkpoint_every=50, image_every=50, freeze_decoder=False)
    return config
