"""The SPADE-ID decoder: every norm blends SPADE and identity-AdaIN through a learned per-pixel mask."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from metaportrait_jax.models.layers import Conv, EqualLinear, instance_norm, spectral_normalize
from metaportrait_jax.ops.resize import resize_bilinear


class StyleLinear(nn.Module):
    """Wraps the EqualLR linear so its parameters sit at the official path `adain/style/linear`."""

    features: int

    @nn.compact
    def __call__(self, identity: jax.Array) -> jax.Array:
        return EqualLinear(self.features, name="linear")(identity)


class IdentityStyle(nn.Module):
    features: int

    @nn.compact
    def __call__(self, identity: jax.Array) -> jax.Array:
        return StyleLinear(self.features, name="style")(identity)


class SpadeIdNorm(nn.Module):
    """out = A·(IN(x)·(1+γ(s)) + β(s)) + (1−A)·(γ_id·IN(x) + β_id), with A = sigmoid(conv(x)) from the raw input."""

    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array, segmap: jax.Array, identity: jax.Array) -> jax.Array:
        c = x.shape[-1]
        normalized = instance_norm(x)
        actv = nn.relu(Conv(self.hidden, 3, name="mlp_shared_0")(segmap))
        spade = normalized * (1 + Conv(c, 3, name="mlp_gamma")(actv)) + Conv(c, 3, name="mlp_beta")(actv)
        attention = nn.sigmoid(Conv(1, 3, name="mlp_attention_0")(x))
        style = IdentityStyle(2 * c, name="adain")(identity)[:, None, None, :]
        adain = style[..., :c] * normalized + style[..., c:]
        return attention * spade + (1 - attention) * adain


class SpadeResnetBlock(nn.Module):
    """shortcut + conv_1(LReLU(norm_1(conv_0(LReLU(norm_0(x)))))); learned 1x1 shortcut when channels change."""

    features: int
    hidden: int
    spectral_norm: bool

    @nn.compact
    def __call__(self, x: jax.Array, segmap: jax.Array, identity: jax.Array, train: bool = False) -> jax.Array:
        fin = x.shape[-1]
        fmid = min(fin, self.features)
        if fin != self.features:
            shortcut = SpadeIdNorm(self.hidden, name="norm_s")(x, segmap, identity)
            shortcut = Conv(self.features, 1, use_bias=False, spectral_norm=self.spectral_norm,
                            name="conv_s")(shortcut, train)
        else:
            shortcut = x
        dx = nn.leaky_relu(SpadeIdNorm(self.hidden, name="norm_0")(x, segmap, identity), 0.2)
        dx = Conv(fmid, 3, spectral_norm=self.spectral_norm, name="conv_0")(dx, train)
        dx = nn.leaky_relu(SpadeIdNorm(self.hidden, name="norm_1")(dx, segmap, identity), 0.2)
        dx = Conv(self.features, 3, spectral_norm=self.spectral_norm, name="conv_1")(dx, train)
        return shortcut + dx


def seed_weight_matrix(kernel: jax.Array) -> jax.Array:
    """torch's spectral-norm matrix of the seed ConvTranspose2d (dim=1): kernel `[I, 4, 4, O]` -> `[O, I·16]`
    (jax or numpy, kept as given)."""
    return kernel.transpose(3, 0, 1, 2).reshape(kernel.shape[-1], -1)


class SeedFromIdentity(nn.Module):
    """The official ConvTranspose2d(id_dim -> C, 4x4) on a 1x1 input: `[B, id_dim]` -> `[B, 4, 4, C]`.

    Stored as kernel `[id_dim, 4, 4, C]`; spectral norm uses torch's dim=1 matrix `[C, id_dim·16]`.
    """

    features: int
    spectral_norm: bool

    @nn.compact
    def __call__(self, identity: jax.Array, train: bool = False) -> jax.Array:
        id_dim = identity.shape[-1]
        # torch's default ConvTranspose2d init (kaiming-uniform a=sqrt(5)): U(±1/sqrt(fan_in)), fan_in = C·16.
        bound = 1 / math.sqrt(self.features * 16)
        init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)  # noqa: E731
        kernel = self.param("kernel", init, (id_dim, 4, 4, self.features))
        if self.spectral_norm:
            kernel = spectral_normalize(self, kernel, seed_weight_matrix(kernel), train)
        bias = self.param("bias", init, (self.features,))
        return jnp.einsum("bi,ihwo->bhwo", identity, kernel.astype(identity.dtype)) + bias.astype(identity.dtype)


def num_middle_blocks(image_size: int) -> int:
    """Middle blocks between the 4x4 head and the first up block at image_size/8 (official 256 -> 2)."""
    n = int(round(math.log2(image_size / 32))) - 1
    if n < 0 or 4 * 2 ** (n + 1) != image_size // 8:
        raise ValueError(f"model.image_size must be a power of two >= 64, got {image_size}")
    return n


class SpadeGenerator(nn.Module):
    """Identity-seeded decoder over four conditioning levels (sizes S/8, S/4, S/2, S) -> `[B, S, S, 3]` pre-activation.

    head_0 at 4x4, middle blocks at 8, 16, ..., then up_0..up_3 at the levels; x2 bilinear between blocks.
    """

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, levels: list[jax.Array], identity: jax.Array, train: bool = False) -> jax.Array:
        nf, hidden, sn = self.config.spade.conv_dim, self.config.spade.hidden, self.config.use_sn

        def up2(x):
            return resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))

        def resized(cond, x):
            return cond if cond.shape[1:3] == x.shape[1:3] else resize_bilinear(cond, x.shape[1:3])

        x = SeedFromIdentity(16 * nf, sn, name="conv1")(identity, train)
        x = SpadeResnetBlock(16 * nf, hidden, sn, name="head_0")(x, resized(levels[0], x), identity, train)
        for i in range(num_middle_blocks(self.config.image_size)):
            x = up2(x)
            x = SpadeResnetBlock(16 * nf, hidden, sn, name=f"G_middle_{i}")(x, resized(levels[0], x), identity, train)
        for i, (features, cond) in enumerate(zip((8 * nf, 4 * nf, 2 * nf, nf), levels)):
            x = up2(x)
            x = SpadeResnetBlock(features, hidden, sn, name=f"up_{i}")(x, cond, identity, train)
        return Conv(3, 3, name="conv_img")(nn.leaky_relu(x, 0.2))
