"""Temporal super-resolution (256² -> 512², the official spatial-temporal enhancement module) and its training.

  metaportrait-jax train --config configs/temporal_sr.py:tiny --workdir runs/sr_tiny
  metaportrait-jax convert official-sr --checkpoint temporal_gfpgan.pth --output ckpt/sr
  metaportrait-jax enhance --checkpoint ckpt/sr --input frames/ --output results/sr

Variants: `official_512` (default; the released network, trained on the synthetic r256_sr set unless
`data.*` says otherwise) and `tiny` (32² -> 64²). Start from GFPGAN v1.3 as the official training does:
`convert official-sr --checkpoint GFPGANv1.3.pth --output ckpt/gfpgan` then `--config.init_from=ckpt/gfpgan`.
Training follows spec `temporal_sr_model.md` §5.
"""

import ml_collections

from configs import common
from metaportrait_jax.models.config import temporal_sr_config


def get_config(variant: str = "official_512") -> ml_collections.ConfigDict:
    variant = common.variant_of(common.SR_VARIANTS, variant or "official_512")
    config = ml_collections.ConfigDict()
    config.task = "temporal_sr"
    config.model = temporal_sr_config(variant)
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
    if variant == "tiny":
        # No pretrained GFPGAN exists at this size, and a frozen random decoder cannot learn: train it too.
        config.train.update(steps=200, batch_size=8, clip_length=3, learning_rate=1e-3, final_learning_rate=1e-5,
                            ema_decay=0.99, checkpoint_every=50, image_every=50, freeze_decoder=False)
    config.data = common.data(common.SR_VARIANTS[variant])
    # Where the low-resolution inputs come from: "render" (the synthetic set's own low-resolution frame) or
    # "base_model" (the base model's output driven by the clip's frames, as the official training pairs them;
    # needs `base_checkpoint`, a base model checkpoint whose image size is the input size).
    config.data.input_source = "render"
    config.data.base_checkpoint = ""
    config.init_from = ""             # a temporal SR model checkpoint to start from (e.g. converted GFPGAN v1.3)
    # Output frames per step of seamless long-video inference: more frames amortise the ±temporal_depth context
    # (official_512: 1297 / 1068 / 954 GFLOP per frame at 16 / 32 / 64) but hold more 512² activations at once.
    config.inference = ml_collections.ConfigDict(dict(chunk_frames=16, fps=25.0))
    return config
