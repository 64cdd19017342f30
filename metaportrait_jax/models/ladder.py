"""LadderEncoder: the global motion code from the source image and both landmark-line images."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from metaportrait_jax.models.layers import Conv, dense, instance_norm
from metaportrait_jax.ops.resize import resize_bilinear


class LadderEncoder(nn.Module):
    """`[B, H, W, 9]` -> unit-norm motion code `[B, z_dim]`.

    len(widths) stages of stride-2 3x3 conv (pad 1 both sides, no bias, spectral norm) -> InstanceNorm -> LReLU 0.2,
    then a linear layer over the NHWC-flattened map.
    """

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        size = self.config.image_size
        if x.shape[1:3] != (size, size):
            x = resize_bilinear(x, (size, size))
        for i, width in enumerate(self.config.ladder.widths):
            x = Conv(width, 3, stride=2, padding=1, use_bias=False, spectral_norm=self.config.use_sn,
                     name=f"layer{i + 1}_0")(x, train)
            x = nn.leaky_relu(instance_norm(x), 0.2)
        z = dense(self.config.ladder.z_dim, "fc")(x.reshape(x.shape[0], -1))
        return z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-5)
