"""The Gaussian image pyramid of the perceptual loss (the official `ImagePyramide`), NHWC."""

import jax
import jax.numpy as jnp
import numpy as np


def gaussian_kernel_1d(scale: float) -> np.ndarray:
    """Normalised 1-D Gaussian: sigma = (1/scale - 1)/2, size 2·round(4·sigma) + 1 (5, 13, 29 taps at 1/2, 1/4, 1/8).

    The official 2-D kernel is the normalised outer product of this one with itself.
    """
    if not 0 < scale < 1:
        raise ValueError(f"gaussian_kernel_1d: scale must be in (0, 1), got {scale}")
    sigma = (1 / scale - 1) / 2
    size = 2 * round(sigma * 4) + 1
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(t ** 2) / (2 * sigma ** 2))
    return (k / k.sum()).astype(np.float32)


def downsample_antialiased(x: jax.Array, scale: float) -> jax.Array:
    """`[B, H, W, C] -> [B, ceil(H·s), ceil(W·s), C]`: depthwise blur with zero padding, then `x[:, ::1/s, ::1/s]`."""
    if scale == 1:
        return x
    step = round(1 / scale)
    if not np.isclose(step * scale, 1.0):
        raise ValueError(f"downsample_antialiased: 1/scale must be an integer, got scale {scale}")
    k = jnp.asarray(gaussian_kernel_1d(scale), x.dtype)
    pad = k.shape[0] // 2
    channels = x.shape[-1]
    # Separable blur: the 2-D normalised outer product equals a row pass followed by a column pass.
    kernel_y = jnp.tile(k.reshape(-1, 1, 1, 1), (1, 1, 1, channels))
    kernel_x = jnp.tile(k.reshape(1, -1, 1, 1), (1, 1, 1, channels))
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.lax.conv_general_dilated(x, kernel_y, (1, 1), ((pad, pad), (0, 0)), dimension_numbers=dn,
                                     feature_group_count=channels)
    x = jax.lax.conv_general_dilated(x, kernel_x, (1, 1), ((0, 0), (pad, pad)), dimension_numbers=dn,
                                     feature_group_count=channels)
    return x[:, ::step, ::step]


def image_pyramid(x: jax.Array, scales=(1.0, 0.5, 0.25, 0.125)) -> dict[float, jax.Array]:
    """`{scale: downsample_antialiased(x, scale)}` for each scale."""
    return {s: downsample_antialiased(x, s) for s in scales}
