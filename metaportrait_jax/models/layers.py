"""Layers with the official model's conventions: torch-style padding, eps 1e-5 norms, spectral norm, EqualLR.

Parameters keep torch's meaning (a spectral-normalised conv stores the un-normalised `kernel` plus the power-iteration
vectors `u`, `v` in the `spectral` collection), so the official checkpoint converts by name.
"""

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from metaportrait_jax.ops.conv import conv2d

# Official init: Xavier-normal with gain 0.02 (std = 0.02·sqrt(2/(fan_in + fan_out)), torch fans), zero bias.
xavier_002 = nn.initializers.variance_scaling(0.02 ** 2, "fan_avg", "normal")
EPS = 1e-5


def torch_default_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default conv / linear init for weights and biases alike: U(±1/√fan_in) (kaiming-uniform, a = √5)."""
    bound = 1 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


CONV_INITS = ("xavier_002", "torch_default", "zeros")


def instance_norm(x: jax.Array, eps: float = EPS) -> jax.Array:
    """Per sample and channel over H, W with biased variance: `[B, H, W, C]`."""
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


def conv_weight_matrix(kernel: jax.Array) -> jax.Array:
    """torch's spectral-norm matrix of a conv kernel `[kh, kw, I, O]`: `[O, I·kh·kw]` (jax or numpy, kept as given:
    the spectral-norm fold computes it in float64)."""
    return kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[-1], -1)


def spectral_normalize(module: nn.Module, kernel: jax.Array, matrix: jax.Array, train: bool) -> jax.Array:
    """kernel / σ with σ = uᵀ W v (torch's `spectral_norm`, eps 1e-12).

    `train=True` runs one power iteration and stores the new u, v (caller makes `spectral` mutable); otherwise the
    stored vectors are used as they are, like torch's eval mode.
    """
    out_dim, in_dim = matrix.shape

    def random_unit(size):
        return lambda: _l2_normalize(jax.random.normal(module.make_rng("params"), (size,), jnp.float32))

    u_var = module.variable("spectral", "u", random_unit(out_dim))
    v_var = module.variable("spectral", "v", random_unit(in_dim))
    u, v = u_var.value, v_var.value
    if train and not module.is_initializing():
        w = jax.lax.stop_gradient(matrix)
        v = _l2_normalize(w.T @ u)
        u = _l2_normalize(w @ v)
        u_var.value, v_var.value = u, v
    sigma = jnp.dot(u, matrix @ v)
    return kernel / sigma


class Conv(nn.Module):
    """2-D conv, NHWC, with explicit symmetric padding (torch `padding=p`), optional spectral norm."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int | None = None  # default kernel_size // 2; 0 for VALID
    use_bias: bool = True
    spectral_norm: bool = False
    init: str = "xavier_002"  # one of CONV_INITS: the base model's, PyTorch's default, or all zeros (weight and bias)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        k = self.kernel_size
        if self.init not in CONV_INITS:
            raise ValueError(f"Conv init must be one of {CONV_INITS}, got {self.init!r}")
        kernel_init, bias_init = {"xavier_002": (xavier_002, nn.initializers.zeros),
                                  "torch_default": (torch_default_init(k * k * x.shape[-1]),) * 2,
                                  "zeros": (nn.initializers.zeros,) * 2}[self.init]
        kernel = self.param("kernel", kernel_init, (k, k, x.shape[-1], self.features))
        if self.spectral_norm:
            kernel = spectral_normalize(self, kernel, conv_weight_matrix(kernel), train)
        p = k // 2 if self.padding is None else self.padding
        y = conv2d(x, kernel.astype(x.dtype), self.stride, p)
        if self.use_bias:
            y = y + self.param("bias", bias_init, (self.features,)).astype(x.dtype)
        return y


def dense(features: int, name: str) -> nn.Dense:
    """A linear layer with the official init."""
    return nn.Dense(features, kernel_init=xavier_002, name=name)


class InstanceNorm(nn.Module):
    """InstanceNorm2d(eps 1e-5) with optional per-channel affine (`scale`, `bias`)."""

    affine: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = instance_norm(x)
        if self.affine:
            c = x.shape[-1]
            y = y * self.param("scale", nn.initializers.ones, (c,)) + self.param("bias", nn.initializers.zeros, (c,))
        return y


class LayerNorm2d(nn.Module):
    """Normalises over (H, W, C) jointly per sample (eps 1e-5), then a per-channel scale and bias."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(1, 2, 3), keepdims=True)
        c = x.shape[-1]
        y = (x - mean) * jax.lax.rsqrt(var + EPS)
        return y * self.param("scale", nn.initializers.ones, (c,)) + self.param("bias", nn.initializers.zeros, (c,))


class EqualLinear(nn.Module):
    """EqualLR linear: stores an N(0, 1) kernel and scales it by sqrt(2/fan_in) at run time.

    The bias starts at zero: the official generator-wide init zeroes it (spec §2.1), overriding the AdaIN γ=1 init.
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.normal(1.0), (fan_in, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return x @ (kernel * math.sqrt(2 / fan_in)).astype(x.dtype) + bias.astype(x.dtype)


def leaky_relu(slope: float) -> Callable[[jax.Array], jax.Array]:
    return lambda x: nn.leaky_relu(x, negative_slope=slope)
