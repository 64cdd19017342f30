"""Coordinate grids, `grid_sample` with PyTorch's conventions, and warping by a dense flow (NHWC).

Two conventions:
- 'official': the released model's. Its base grid is align-corners=True (x = 2j/(W-1) - 1) but it samples with
  `align_corners=False` and reflection padding, so zero flow is not the identity (a <=0.5 px stretch to the borders).
  The deformation (grid + flow) is resized to the image size before sampling.
- 'aligned': pixel-centre grid (x = (2j+1)/W - 1) sampled with `align_corners=False`; the flow (a displacement) is
  resized and added to the target-size grid, so zero flow is the identity at every size.
"""

import jax
import jax.numpy as jnp

from metaportrait_jax.ops.resize import resize_bilinear

CONVENTIONS = ("official", "aligned")
PADDING_MODES = ("zeros", "border", "reflection")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"grid convention must be one of {CONVENTIONS}, got {convention!r}")


def make_coordinate_grid(height: int, width: int, dtype=jnp.float32) -> jax.Array:
    """`[H, W, 2]` (x, y) in [-1, 1] with the corners on ±1 (the official `make_coordinate_grid`)."""
    x = 2 * jnp.arange(width, dtype=dtype) / (width - 1) - 1
    y = 2 * jnp.arange(height, dtype=dtype) / (height - 1) - 1
    return jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)


def make_pixel_center_grid(height: int, width: int, dtype=jnp.float32) -> jax.Array:
    """`[H, W, 2]` (x, y) of pixel centres: x = (2j+1)/W - 1; sampled with align_corners=False it is the identity."""
    x = (2 * jnp.arange(width, dtype=dtype) + 1) / width - 1
    y = (2 * jnp.arange(height, dtype=dtype) + 1) / height - 1
    return jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)


def _unnormalize(coord: jax.Array, size: int, align_corners: bool) -> jax.Array:
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def _reflect(p: jax.Array, size: int, align_corners: bool) -> jax.Array:
    """Reflects a continuous pixel coordinate into range, as torch's `reflect_coordinates`, then clips."""
    if align_corners:
        lo, span = 0.0, float(size - 1)
    else:
        lo, span = -0.5, float(size)
    if span <= 0:
        return jnp.zeros_like(p)
    m = jnp.abs(p - lo)
    flips = jnp.floor(m / span)
    extra = m - flips * span
    even = jnp.mod(flips, 2) == 0
    p = jnp.where(even, extra + lo, span - extra + lo)
    return jnp.clip(p, 0, size - 1)


def grid_sample(image: jax.Array, grid: jax.Array, *, align_corners: bool = False,
                padding_mode: str = "reflection") -> jax.Array:
    """Bilinear sampling, equal to `F.grid_sample(mode='bilinear')` (values and gradients).

    Args:
      image: `[B, H, W, C]`.
      grid: `[B, h, w, 2]`, (x, y) in [-1, 1].
    Returns:
      `[B, h, w, C]`.
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"grid_sample: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if image.ndim != 4 or grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] != image.shape[0]:
        raise ValueError(f"grid_sample: expected image [B,H,W,C] and grid [B,h,w,2], got {image.shape} and "
                         f"{grid.shape}")
    b, height, width, channels = image.shape
    x = _unnormalize(grid[..., 0], width, align_corners)
    y = _unnormalize(grid[..., 1], height, align_corners)
    if padding_mode == "border":
        x = jnp.clip(x, 0, width - 1)
        y = jnp.clip(y, 0, height - 1)
    elif padding_mode == "reflection":
        x = _reflect(x, width, align_corners)
        y = _reflect(y, height, align_corners)
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    wx1 = x - x0
    wy1 = y - y0
    x0 = x0.astype(jnp.int32)
    y0 = y0.astype(jnp.int32)
    flat = image.reshape(b, height * width, channels)
    out = jnp.zeros(grid.shape[:3] + (channels,), image.dtype)
    for dy, wy in ((0, 1 - wy1), (1, wy1)):
        for dx, wx in ((0, 1 - wx1), (1, wx1)):
            xi = x0 + dx
            yi = y0 + dy
            valid = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            index = jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1)
            values = jnp.take_along_axis(flat, index.reshape(b, -1, 1), axis=1).reshape(out.shape)
            weight = jnp.where(valid, wx * wy, 0).astype(image.dtype)
            out = out + values * weight[..., None]
    return out


def pixel_flow_to_normalized(flow_px: jax.Array, convention: str) -> jax.Array:
    """`[B, h, w, 2]` pixel displacements (x, y) -> normalised units (official: ×2/(size-1); aligned: ×2/size)."""
    _check_convention(convention)
    h, w = flow_px.shape[1], flow_px.shape[2]
    if convention == "official":
        scale = jnp.asarray([2 / (w - 1), 2 / (h - 1)], flow_px.dtype)
    else:
        scale = jnp.asarray([2 / w, 2 / h], flow_px.dtype)
    return flow_px * scale


def grid_dtype(flow: jax.Array) -> jnp.dtype:
    """float32, or float64 for a float64 flow."""
    return jnp.promote_types(flow.dtype, jnp.float32)


def deformation_from_flow(flow: jax.Array, convention: str) -> jax.Array:
    """`[B, h, w, 2]`: the sampling grid = base grid of the convention + flow, in at least float32 (a bf16 grid
    would be off by up to a pixel at 256²)."""
    _check_convention(convention)
    h, w = flow.shape[1], flow.shape[2]
    dtype = grid_dtype(flow)
    base = make_coordinate_grid(h, w, dtype) if convention == "official" else make_pixel_center_grid(h, w, dtype)
    return base[None] + flow.astype(dtype)


def warp_with_flow(image: jax.Array, flow: jax.Array, convention: str) -> jax.Array:
    """Warps `image [B, H, W, C]` by `flow [B, h, w, 2]` (normalised units); returns `[B, H, W, C]`."""
    _check_convention(convention)
    height, width = image.shape[1], image.shape[2]
    if convention == "official":
        grid = deformation_from_flow(flow, convention)
        if grid.shape[1:3] != (height, width):
            grid = resize_bilinear(grid, (height, width))
    else:
        if flow.shape[1:3] != (height, width):
            flow = resize_bilinear(flow, (height, width))
        dtype = grid_dtype(flow)
        grid = make_pixel_center_grid(height, width, dtype)[None] + flow.astype(dtype)
    return grid_sample(image, grid.astype(image.dtype), align_corners=False, padding_mode="reflection")
