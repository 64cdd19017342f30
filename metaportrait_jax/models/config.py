"""Architecture presets of the base generator and discriminator.

`official_256` is the released MetaPortrait architecture, field for field; its quirks (line-image resize chain,
official grid convention, tanh output) are named switches so new models can turn them off.
"""

import ml_collections

OFFICIAL_QUIRKS = dict(
    # Refine levels see the line images through the official in-place 256->32->64->128->256 resize chain.
    line_resize_chain=True,
    # 'official': align-corners=True coordinate grid sampled with align_corners=False and reflection padding
    # (zero flow is not the identity); 'aligned': pixel-centre grid, zero flow is the identity.
    grid_convention="official",
    # 'tanh' (official: trained against [0, 1] targets) or 'sigmoid' (range matches the targets).
    output_activation="tanh",
)


def generator_config(variant: str = "official_256") -> ml_collections.ConfigDict:
    """Returns the generator and discriminator architecture for `variant` ('official_256' or 'tiny')."""
    if variant == "official_256":
        c = dict(
            image_size=256,
            topology="dense669",
            id_dim=256,
            num_gaze=8,
            gaze_variance=0.005,
            use_sn=True,
            ladder=dict(widths=(64, 128, 256, 512, 512, 512), z_dim=512),
            dense_motion=dict(block_expansion=64, max_features=1024, num_blocks=5, dec_lease=2, adain_hidden=128,
                              head_kernel=7),
            feature_encoder=dict(block_expansion=64, max_features=512, num_blocks=3, fuse_channels=64),
            spade=dict(conv_dim=32, hidden=128),
            discriminator=dict(block_expansion=32, max_features=512, num_blocks=4),
        )
    elif variant == "tiny":
        c = dict(
            image_size=64,
            topology="dense669",
            id_dim=32,
            num_gaze=8,
            gaze_variance=0.005,
            use_sn=True,
            ladder=dict(widths=(16, 32, 64, 64), z_dim=64),
            dense_motion=dict(block_expansion=16, max_features=64, num_blocks=3, dec_lease=2, adain_hidden=32,
                              head_kernel=7),
            feature_encoder=dict(block_expansion=16, max_features=64, num_blocks=3, fuse_channels=16),
            spade=dict(conv_dim=8, hidden=32),
            discriminator=dict(block_expansion=8, max_features=32, num_blocks=4),
        )
    else:
        raise ValueError(f"unknown model variant {variant!r}; expected 'official_256' or 'tiny'")
    c.update(OFFICIAL_QUIRKS)
    return ml_collections.ConfigDict(c)


def temporal_sr_config(variant: str = "official_512") -> ml_collections.ConfigDict:
    """The temporal SR network (spec `temporal_sr_model.md` §3): 'official_512' (256² -> 512², the released
    `temporal_gfpgan.pth`) or 'tiny' (32² -> 64², for tests).

    `unet_channels` are the U-Net widths at resolutions 4, 8, ..., out_size; the StyleGAN2 decoder is twice as wide
    (SFT acts on half of its channels). The input is always upsampled ×2 inside the network.
    """
    if variant == "official_512":
        return ml_collections.ConfigDict(dict(out_size=512, style_dim=512,
                                              unet_channels=(256, 256, 256, 256, 256, 128, 64, 32)))
    if variant == "tiny":
        return ml_collections.ConfigDict(dict(out_size=64, style_dim=32, unet_channels=(16, 16, 16, 8, 8)))
    raise ValueError(f"unknown temporal SR variant {variant!r}; expected 'official_512' or 'tiny'")
