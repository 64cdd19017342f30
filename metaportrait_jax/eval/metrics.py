"""Image and video quality measures shared by `evaluate`, the demo, adaptation and SR reports.

Images are float `[..., H, W, 3]` in [0, 1] (or uint8, converted). Every function returns per-frame values; callers
average.
"""

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from metaportrait_jax.ops.warp import pixel_flow_to_normalized, warp_with_flow


def as_unit_float(images: np.ndarray | jax.Array) -> jax.Array:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def psnr(prediction, target) -> jax.Array:
    """`[B, H, W, 3]` pair -> `[B]` PSNR in dB (peak 1)."""
    return dm_pix.psnr(as_unit_float(prediction), as_unit_float(target))


def ssim(prediction, target) -> jax.Array:
    """`[B, H, W, 3]` pair -> `[B]` SSIM (Gaussian window 11, σ 1.5, as in the field's tables)."""
    return dm_pix.ssim(as_unit_float(prediction), as_unit_float(target))


def l1(prediction, target) -> jax.Array:
    """`[B, H, W, 3]` pair -> `[B]` mean absolute error in [0, 1] units."""
    return jnp.mean(jnp.abs(as_unit_float(prediction) - as_unit_float(target)), axis=(1, 2, 3))


def temporal_warping_error(frames, backward_flow) -> jax.Array:
    """Flicker of a video against known motion: `[T-1]` mean |frame_t − frame_{t−1} warped by the flow of t|.

    `frames [T, H, W, 3]`; `backward_flow [T, h, w, 2]` in pixels of its own size: for each pixel of frame t, where its
    point was in frame t−1 (the synthetic benchmark's `flow`; frame 0's is unused). A flow at another resolution than
    the frames (e.g. 256² flow for 512² output) is resized and rescaled. A perfectly consistent video scores 0 up to
    disocclusions.
    """
    frames = as_unit_float(frames)
    flow = jnp.asarray(backward_flow, jnp.float32)
    if frames.shape[0] != flow.shape[0] or frames.shape[0] < 2:
        raise ValueError(f"temporal_warping_error: need ≥ 2 frames and one flow per frame, got frames "
                         f"{frames.shape} and flow {flow.shape}")
    normalized = pixel_flow_to_normalized(flow[1:], "aligned")  # resolution-free units
    previous = warp_with_flow(frames[:-1], normalized, "aligned")
    return jnp.mean(jnp.abs(frames[1:] - previous), axis=(1, 2, 3))
