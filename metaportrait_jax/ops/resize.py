"""Resizes with PyTorch's conventions (`F.interpolate`), NHWC.

`jax.image.resize` antialiases when downsampling and picks other nearest indices, so the official model's resizes are
written out here: bilinear with `align_corners=False` and no antialiasing, and integer-factor nearest.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and upper weight per output position (torch align_corners=False)."""
    # float32 arithmetic in torch's order, so the weights round exactly as torch's CPU kernel does.
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))  # torch clamps negative source coordinates to 0
    lo = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (src - lo.astype(np.float32)).astype(np.float32)
    return lo, hi, frac


def _resize_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    lo, hi, frac = _bilinear_taps(in_size, out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    w = jnp.asarray(frac, x.dtype).reshape(shape)
    a = jnp.take(x, jnp.asarray(lo), axis=axis)
    b = jnp.take(x, jnp.asarray(hi), axis=axis)
    return a * (1 - w) + b * w


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """`[B, H, W, C] -> [B, h, w, C]`, equal to `F.interpolate(mode='bilinear', align_corners=False)`.

    Separable: two gathers of the neighbouring rows/columns and a lerp per axis (cheaper than an interpolation
    matrix at 256² with many channels).
    """
    if x.ndim != 4:
        raise ValueError(f"resize_bilinear: x must be [B, H, W, C], got shape {x.shape}")
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"resize_bilinear: size must be positive, got {size}")
    return _resize_axis(_resize_axis(x, 1, h), 2, w)


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
    """`[B, H, W, C] -> [B, H·f, W·f, C]`: torch nearest upsampling by an integer factor (a plain repeat)."""
    if factor < 1:
        raise ValueError(f"upsample_nearest: factor must be >= 1, got {factor}")
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def subsample_nearest(x: jax.Array, factor: int) -> jax.Array:
    """`[B, H, W, C] -> [B, ceil(H/f), ceil(W/f), C]`: `x[:, ::f, ::f]`, torch nearest downsampling from index 0."""
    if factor < 1:
        raise ValueError(f"subsample_nearest: factor must be >= 1, got {factor}")
    return x[:, ::factor, ::factor]
