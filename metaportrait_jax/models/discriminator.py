"""The official single-scale PatchGAN discriminator (no spectral norm, LSGAN logits)."""

import flax.linen as nn
import jax
import ml_collections

from metaportrait_jax.models.layers import Conv, InstanceNorm


class DiscriminatorBlock(nn.Module):
    features: int
    norm: bool
    pool: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Conv(self.features, 4, padding=0, name="conv")(x)
        if self.norm:
            x = InstanceNorm(name="norm")(x)
        x = nn.leaky_relu(x, 0.2)
        if self.pool:
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        return x


class PatchDiscriminator(nn.Module):
    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[list[jax.Array], jax.Array]:
        c = self.config.discriminator
        features = []
        for i in range(c.num_blocks):
            x = DiscriminatorBlock(min(c.max_features, c.block_expansion * 2 ** (i + 1)), norm=i > 0,
                                   pool=i < c.num_blocks - 1, name=f"down_blocks_{i}")(x)
            features.append(x)
        return features, Conv(1, 1, padding=0, name="conv")(x)


class Discriminator(nn.Module):
    """`[B, H, W, 3]` -> (4 block outputs for feature matching, patch logits `[B, h, w, 1]`).

    The official MultiScaleDiscriminator with its single scale; parameters sit under `discs_1` like torch's `discs.1`.
    """

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[list[jax.Array], jax.Array]:
        return PatchDiscriminator(self.config, name="discs_1")(x)
