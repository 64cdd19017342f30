"""2-D convolution with a faster weight gradient on XLA:CPU.

`conv2d` is `jax.lax.conv_general_dilated(x, kernel, (s, s), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO",
"NHWC"))` with a `jax.custom_vjp`: the forward pass and the input gradient are XLA's own convolutions, the weight
gradient is computed as matrix products instead of XLA's weight-gradient convolution.

Why: XLA:CPU computes the weight gradient as a convolution whose "channels" are the batch (1 at batch 1) and whose
"kernel" is the whole output gradient (e.g. 256x256x128 floats = 32 MB at 256², more than this machine's L3). That
runs at 30-100 GFLOP/s where the forward pass runs at ~450. Here the gradient is summed over strips of output rows
(`lax.scan`): each strip builds its im2col patches `[pixels, kh·kw·I]` (about a megabyte, so they stay in cache) and
multiplies them with the strip's output gradient `[pixels, O]`. Same products and sums, in another order: fp32
round-off differences only (and closer to a float64 reference than XLA's: 5e-7 vs 1e-5 relative at 256²). 1x1
kernels are a single matrix product; problems whose patches fit in cache are one product without the loop. Where
XLA's own weight gradient measured faster (batch >= 4, many more input than output channels, small problems; see
`prefer_lax`), and on every platform but the CPU (the products were measured on CPUs only), 'auto' keeps it.
`benchmarks/conv_grad.py` measures both.

The backward pass is written with ordinary differentiable lax ops, so gradients of gradients (second-order MAML,
Hessian-vector products) work; forward-mode differentiation of `conv2d` itself (`jax.jvp`) does not, as for any
`custom_vjp`.
"""

import functools
import math

import jax
import jax.numpy as jnp

# The original, bound at import: a benchmark may patch `jax.lax.conv_general_dilated` with `conv2d`.
_lax_conv = jax.lax.conv_general_dilated
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

# One strip's patches are about this many bytes (L2 is 1-2 MB per core on current x86 servers) but at least
# MIN_STRIP_PIXELS pixels where that stays under MAX_STRIP_BYTES; problems whose patches all together are at most SINGLE_PRODUCT_BYTES are one matrix
# product without a loop.
STRIP_BYTES = 1 << 20
MIN_STRIP_PIXELS = 512  # many input channels: no fewer pixels per strip (measured 1.3-2x better than 1 row)
MAX_STRIP_BYTES = 12 << 20  # ... unless that makes one strip's patches larger than this (7x7 512->2: 1 row)
SINGLE_PRODUCT_BYTES = 4 << 20
WEIGHT_GRAD_METHODS = ("auto", "lax", "patches", "strips")


def _forward(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    return _lax_conv(x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
                     dimension_numbers=_DIMENSION_NUMBERS)


def input_grad(g: jax.Array, kernel: jax.Array, in_hw: tuple[int, int], stride: int, padding: int) -> jax.Array:
    """∂L/∂x from the output gradient `g` [B, Ho, Wo, O]: the transposed convolution (what JAX itself does)."""
    kh, kw = kernel.shape[:2]
    pads = []
    for size, k, out in zip(in_hw, (kh, kw), g.shape[1:3]):
        rest = size + 2 * padding - k - (out - 1) * stride  # input rows/cols the strided windows never reach
        pads.append((k - 1 - padding, k - 1 - padding + rest))
    return _lax_conv(g, kernel[::-1, ::-1], (1, 1), pads, lhs_dilation=(stride, stride),
                     dimension_numbers=("NHWC", "HWOI", "NHWC"))


def _taps(xs: jax.Array, kh: int, kw: int, stride: int, rows: int, cols: int) -> list[jax.Array]:
    """The kh·kw strided windows of the padded input block `xs` [n, ·, ·, I], each `[n, rows, cols, I]`."""
    n, _, _, c = xs.shape
    return [jax.lax.slice(xs, (0, dy, dx, 0), (n, dy + (rows - 1) * stride + 1, dx + (cols - 1) * stride + 1, c),
                          (1, stride, stride, 1))
            for dy in range(kh) for dx in range(kw)]


def _patch_product(xs: jax.Array, gs: jax.Array, kh: int, kw: int, stride: int, acc_dtype) -> jax.Array:
    """Σ over the block's pixels of patch ⊗ gradient: `[kh·kw·I, O]` from `xs` [n, ·, ·, I], `gs` [n, r, c, O]."""
    n, rows, cols, out = gs.shape
    patches = jnp.concatenate(_taps(xs, kh, kw, stride, rows, cols), axis=-1).reshape(n * rows * cols, -1)
    return jax.lax.dot_general(patches, gs.reshape(n * rows * cols, out), (((0,), (0,)), ((), ())),
                               preferred_element_type=acc_dtype)


def prefer_lax(batch: int, in_c: int, out_c: int, taps: int, stride: int, pixels: int) -> bool:
    """Where XLA's own weight gradient measured faster (2-core EPYC, jax 0.10.2; benchmarks/conv_grad.py).

    XLA's weight-gradient convolution contracts over the batch as its channel dimension and holds the whole output
    gradient as its kernel: it does well with batch >= 4, when the output gradient is thin relative to the input
    (64->32, 128->32, 512->128, 530->128, 2048->512 at 3x3) and on small problems (<= 64x64 output pixels, <= 64
    channels: everything is in cache and the loop and patch copies here cost more). The products here win for batch
    1-2 otherwise (64->64, 82->128, 128->64, 256->64 at 256², 128->256, 256->512, 512->512, 1024->1024), for 1x1 and
    strided kernels (XLA uses a dilated convolution there), and for outputs of < 32 channels (e.g. the 7x7 flow head,
    64->16). `pixels` = batch · output height · output width.
    """
    if taps == 1 or stride > 1 or out_c < 32:
        return False
    small = in_c * out_c <= 64 * 64 and pixels <= 64 * 64
    return small or batch >= 4 or (in_c >= 4 * out_c and out_c >= 128) or (in_c >= 2 * out_c and out_c <= 32)


def _acc_dtype(dtype):
    # Sums of bf16/f16 products accumulate in float32 (as XLA's own convolutions do); float32 stays float32.
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype


def weight_grad(x: jax.Array, g: jax.Array, kernel_hw: tuple[int, int], stride: int, padding: int,
                method: str = "auto") -> jax.Array:
    """∂L/∂kernel `[kh, kw, I, O]` of `conv2d(x, kernel, stride, padding)` for the output gradient `g`.

    method: 'lax' (XLA's weight-gradient convolution), 'patches' (one im2col matrix product), 'strips' (the same
    product summed over strips of output rows in a `lax.scan`, so each strip's patches stay in cache), or 'auto'
    ('lax' where `prefer_lax`, else on CPU 'patches' when all patches fit in SINGLE_PRODUCT_BYTES, else 'strips';
    on any other platform 'lax', chosen per platform when the program is lowered).
    """
    if method not in WEIGHT_GRAD_METHODS:
        raise ValueError(f"method must be one of {WEIGHT_GRAD_METHODS}, got {method!r}")
    kh, kw = kernel_hw
    batch, out_h, out_w, out_c = g.shape
    in_c = x.shape[-1]
    patch_bytes = kh * kw * in_c * jnp.dtype(x.dtype).itemsize  # one pixel's patch
    if method == "auto":
        if prefer_lax(batch, in_c, out_c, kh * kw, stride, batch * out_h * out_w):
            method = "lax"
        else:
            products = "patches" if batch * out_h * out_w * patch_bytes <= SINGLE_PRODUCT_BYTES else "strips"
            # The products were measured faster on XLA:CPU only; a program lowered for a GPU or TPU (or for several
            # platforms, e.g. by jax.export) keeps the vendor's weight-gradient convolution there.
            return jax.lax.platform_dependent(
                x, g, cpu=lambda x, g: weight_grad(x, g, kernel_hw, stride, padding, products),
                default=lambda x, g: weight_grad(x, g, kernel_hw, stride, padding, "lax"))
    if method == "lax":
        kernel = jnp.zeros((kh, kw, in_c, out_c), x.dtype)
        return jax.vjp(lambda k: _forward(x, k, stride, padding), kernel)[1](g)[0]
    acc_dtype = _acc_dtype(x.dtype)
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))) if padding else x
    if method == "patches":
        dw = _patch_product(xp, g, kh, kw, stride, acc_dtype)
        return dw.reshape(kh, kw, in_c, out_c).astype(x.dtype)
    # Strips: `images` whole images per step when an image is smaller than a strip, else `rows` output rows of one
    # image. Rows and images past the end are zero-padded (zero gradient rows add nothing).
    pixels = max(1, STRIP_BYTES // patch_bytes, min(MIN_STRIP_PIXELS, MAX_STRIP_BYTES // patch_bytes))
    if out_h * out_w <= pixels:
        images = min(batch, pixels // (out_h * out_w))
        images = math.ceil(batch / math.ceil(batch / images))  # balanced: as little padding as possible
        rows, steps_per_image = out_h, 1
    else:
        images = 1
        rows = max(1, min(out_h, pixels // out_w))
        steps_per_image = math.ceil(out_h / rows)
        rows = math.ceil(out_h / steps_per_image)
    groups = math.ceil(batch / images)
    in_rows = (rows - 1) * stride + kh
    need_h = (steps_per_image * rows - 1) * stride + kh
    xp = jnp.pad(xp, ((0, groups * images - batch), (0, max(0, need_h - xp.shape[1])), (0, 0), (0, 0)))
    g = jnp.pad(g, ((0, groups * images - batch), (0, steps_per_image * rows - out_h), (0, 0), (0, 0)))

    def step(acc, i):
        b = (i // steps_per_image) * images
        r = i % steps_per_image
        xs = jax.lax.dynamic_slice(xp, (b, r * rows * stride, 0, 0), (images, in_rows, xp.shape[2], in_c))
        gs = jax.lax.dynamic_slice(g, (b, r * rows, 0, 0), (images, rows, out_w, out_c))
        return acc + _patch_product(xs, gs, kh, kw, stride, acc_dtype), None

    acc = jnp.zeros((kh * kw * in_c, out_c), acc_dtype)
    dw, _ = jax.lax.scan(step, acc, jnp.arange(groups * steps_per_image))
    return dw.reshape(kh, kw, in_c, out_c).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d(x, kernel, stride, padding, method):
    return _forward(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding, method):
    return _forward(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, method, residuals, g):
    x, kernel = residuals
    dx = input_grad(g, kernel, x.shape[1:3], stride, padding)
    dw = weight_grad(x, g, kernel.shape[:2], stride, padding, method)
    return dx, dw


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0, *,
           weight_grad_method: str = "auto") -> jax.Array:
    """NHWC `x` [B, H, W, I] * HWIO `kernel` [kh, kw, I, O], stride `stride`, `padding` zeros on every side.

    Same values as `jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding),) * 2,
    dimension_numbers=("NHWC", "HWIO", "NHWC"))`; its gradient w.r.t. `kernel` uses `weight_grad`. Computes in
    `x.dtype`: `kernel` is cast to it (outside the custom rule, so the kernel's gradient keeps the kernel's dtype).
    """
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"expected x [B, H, W, I] and kernel [kh, kw, I, O], got {x.shape} and {kernel.shape}")
    if weight_grad_method not in WEIGHT_GRAD_METHODS:
        raise ValueError(f"weight_grad_method must be one of {WEIGHT_GRAD_METHODS}, got {weight_grad_method!r}")
    return _conv2d(x, kernel.astype(x.dtype), int(stride), int(padding), weight_grad_method)
