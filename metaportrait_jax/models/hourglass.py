"""FOMM-style hourglass with the official MetaPortrait blocks (ReLU, avg-pool down, nearest-x2 up).

Each block's norm is either an affine InstanceNorm or an AdaIN driven by a code vector (the dense-motion network).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from metaportrait_jax.models.layers import Conv, InstanceNorm, dense, instance_norm
from metaportrait_jax.ops.resize import upsample_nearest


class AdaIN(nn.Module):
    """IN(x)·(1 + γ(code)) + β(code), with γ, β from a shared ReLU hidden layer."""

    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array, code: jax.Array) -> jax.Array:
        c = x.shape[-1]
        h = nn.relu(dense(self.hidden, "mlp_shared_0")(code))
        gamma = dense(c, "mlp_gamma")(h)[:, None, None, :]
        beta = dense(c, "mlp_beta")(h)[:, None, None, :]
        return instance_norm(x) * (1 + gamma) + beta


def _conv_norm_relu(x: jax.Array, code: jax.Array | None, features: int, adain_hidden: int | None) -> jax.Array:
    """3x3 conv (bias) -> norm -> ReLU, created inside the calling module (params `conv`, `norm`)."""
    x = Conv(features, 3, name="conv")(x)
    if adain_hidden:
        x = AdaIN(adain_hidden, name="norm")(x, code)
    else:
        x = InstanceNorm(name="norm")(x)
    return nn.relu(x)


class SameBlock(nn.Module):
    features: int
    adain_hidden: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, code: jax.Array | None) -> jax.Array:
        return _conv_norm_relu(x, code, self.features, self.adain_hidden)


class HourglassBlock(nn.Module):
    """Down: conv-norm-ReLU then 2x2 avg pool. Up: nearest x2 then conv-norm-ReLU. Optional SameBlock2d after."""

    features: int
    direction: str  # 'down' or 'up'
    adain_hidden: int | None = None
    same_block: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, code: jax.Array | None) -> jax.Array:
        if self.direction == "up":
            x = upsample_nearest(x, 2)
        x = _conv_norm_relu(x, code, self.features, self.adain_hidden)
        if self.direction == "down":
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        if self.same_block:
            x = SameBlock(self.features, self.adain_hidden, name="SameBlock2d")(x, code)
        return x


class HourglassEncoder(nn.Module):
    block_expansion: int
    max_features: int
    num_blocks: int
    adain_hidden: int | None = None
    same_blocks: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, code: jax.Array | None) -> list[jax.Array]:
        outs = [x]
        for i in range(self.num_blocks):
            features = min(self.max_features, self.block_expansion * 2 ** (i + 1))
            outs.append(HourglassBlock(features, "down", self.adain_hidden, self.same_blocks,
                                       name=f"down_blocks_{i}")(outs[-1], code))
        return outs


class HourglassDecoder(nn.Module):
    block_expansion: int
    max_features: int
    num_blocks: int
    dec_lease: int = 0
    adain_hidden: int | None = None
    same_blocks: bool = False

    @nn.compact
    def __call__(self, skips: list[jax.Array], code: jax.Array | None) -> list[jax.Array]:
        skips = list(skips)
        out = skips.pop()
        levels = [out]
        for j, i in enumerate(reversed(range(self.dec_lease, self.num_blocks))):
            features = min(self.max_features, self.block_expansion * 2 ** i)
            out = HourglassBlock(features, "up", self.adain_hidden, self.same_blocks, name=f"up_blocks_{j}")(out, code)
            levels.append(out)
            out = jnp.concatenate([out, skips.pop()], axis=-1)
        levels[-1] = out
        return levels


class Hourglass(nn.Module):
    """Encoder of `num_blocks` down blocks, decoder of `num_blocks - dec_lease` up blocks with skip concats.

    Channel rule (FOMM): down i -> min(max_f, be·2^(i+1)); up i (deepest first) -> min(max_f, be·2^i), its output
    concatenated as [out, skip]. Returns the list [deepest encoding, each up block's output before its concat, ...,
    the final concatenated map] (the last entry is the hourglass output).
    """

    block_expansion: int
    max_features: int
    num_blocks: int
    dec_lease: int = 0
    adain_hidden: int | None = None
    same_blocks: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, code: jax.Array | None = None) -> list[jax.Array]:
        args = (self.block_expansion, self.max_features, self.num_blocks)
        skips = HourglassEncoder(*args, self.adain_hidden, self.same_blocks, name="encoder")(x, code)
        return HourglassDecoder(*args, self.dec_lease, self.adain_hidden, self.same_blocks, name="decoder")(skips, code)
