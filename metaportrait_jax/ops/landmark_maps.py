"""Maps drawn from landmarks: gaze heatmaps (jnp, inside the model) and box masks (numpy, data pipeline)."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metaportrait_jax.ops.warp import make_coordinate_grid


def gaze_heatmaps(points: jax.Array, height: int, width: int, variance: float = 0.005) -> jax.Array:
    """`[B, G, 2]` points (x, y) in [-1, 1] -> `[B, H, W, G]` Gaussians exp(-0.5·‖g − μ‖²/variance).

    Evaluated on the align-corners coordinate grid, as the official `kp2gaussian`.
    """
    grid = make_coordinate_grid(height, width, points.dtype)  # [H, W, 2]
    diff = grid[None, :, :, None, :] - points[:, None, None, :, :]
    return jnp.exp(-0.5 * jnp.sum(diff ** 2, axis=-1) / variance)


def box_mask(points: np.ndarray, x_rows: tuple[int, int], y_rows: tuple[int, int], height: int, width: int,
             pad: int) -> np.ndarray:
    """`[H, W, 1]` float32 mask of the padded box spanned by two x-rows and two y-rows of `points [N, 2]` in [-1, 1].

    Official arithmetic: bounds int((l + 1)·W/2) in float32, filled [t−pad : d+pad+1, l−pad : r+pad+1], clipped.
    """
    points = np.asarray(points, np.float32)
    mask = np.zeros((height, width, 1), np.float32)
    half_w, half_h = np.float32(width / 2), np.float32(height / 2)
    left = int((points[x_rows[0], 0] + np.float32(1)) * half_w)
    right = int((points[x_rows[1], 0] + np.float32(1)) * half_w)
    top = int((points[y_rows[0], 1] + np.float32(1)) * half_h)
    bottom = int((points[y_rows[1], 1] + np.float32(1)) * half_h)
    mask[max(0, top - pad):min(height, bottom + pad + 1), max(0, left - pad):min(width, right + pad + 1)] = 1
    return mask


def box_masks(points: np.ndarray, boxes: Sequence[tuple[tuple[int, int], tuple[int, int]]], height: int, width: int,
              pad: int) -> np.ndarray:
    """Union of `box_mask` over several (x_rows, y_rows) boxes, `[H, W, 1]` float32."""
    mask = np.zeros((height, width, 1), np.float32)
    for x_rows, y_rows in boxes:
        mask = np.maximum(mask, box_mask(points, x_rows, y_rows, height, width, pad))
    return mask
