"""Inception-v3 up to its 2048-d average pool ("pool3"), the feature network of the Fréchet Inception Distance.

Module and parameter names follow torchvision's `Inception3` (`Mixed_5b/branch1x1/...`), so its state dicts convert by
name (`convert/inception.py`). Each `BasicConv2d` (conv without bias, batch norm, ReLU) is stored with its batch norm
folded into the conv: one `kernel` and one `bias` per conv.

Two variants differ only in four pooling details:
- "torchvision": torchvision's ImageNet model (average pools count the zero padding);
- "pytorch_fid": the 2015 TensorFlow graph that FID scores in the literature use, as ported by pytorch-fid: the
  average pools of Mixed_5b..5d, Mixed_6b..6e and Mixed_7b exclude the padding, and Mixed_7c's pool branch takes a
  max instead of an average.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from metaportrait_jax.ops.resize import resize_bilinear

VARIANTS = ("pytorch_fid", "torchvision")
INPUT_SIZE = 299
MIN_INPUT_SIZE = 75  # the smallest side whose feature map survives to Mixed_7c
FEATURES = 2048


class BasicConv(nn.Module):
    """Conv (batch norm folded in) + ReLU, NHWC. `padding` per spatial axis, as torch's (pad_h, pad_w)."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        (ph, pw) = self.padding
        x = nn.Conv(self.features, self.kernel, strides=self.stride, padding=((ph, ph), (pw, pw)), name="conv")(x)
        return nn.relu(x)


def _conv(features: int, kernel: int | tuple[int, int], name: str, stride: int = 1,
          padding: int | tuple[int, int] = 0) -> BasicConv:
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = (padding, padding) if isinstance(padding, int) else padding
    return BasicConv(features, kernel, stride, padding, name=name)


def _pool_3x3_same(x: jax.Array, kind: str) -> jax.Array:
    """3×3 stride-1 pool with one pixel of padding: "avg" (padding counted, torch's default), "avg_valid_only"
    (padding not counted) or "max"."""
    pad = ((1, 1), (1, 1))
    if kind == "max":
        return nn.max_pool(x, (3, 3), strides=(1, 1), padding=pad)
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=pad, count_include_pad=kind == "avg")


def _max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    pool_features: int
    pool: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = _conv(64, 1, "branch1x1")(x)
        b5 = _conv(64, 5, "branch5x5_2", padding=2)(_conv(48, 1, "branch5x5_1")(x))
        b3 = _conv(64, 1, "branch3x3dbl_1")(x)
        b3 = _conv(96, 3, "branch3x3dbl_3", padding=1)(_conv(96, 3, "branch3x3dbl_2", padding=1)(b3))
        bp = _conv(self.pool_features, 1, "branch_pool")(_pool_3x3_same(x, self.pool))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = _conv(384, 3, "branch3x3", stride=2)(x)
        bd = _conv(64, 1, "branch3x3dbl_1")(x)
        bd = _conv(96, 3, "branch3x3dbl_3", stride=2)(_conv(96, 3, "branch3x3dbl_2", padding=1)(bd))
        return jnp.concatenate([b3, bd, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int
    pool: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.channels_7x7
        b1 = _conv(192, 1, "branch1x1")(x)
        b7 = _conv(c, 1, "branch7x7_1")(x)
        b7 = _conv(c, (1, 7), "branch7x7_2", padding=(0, 3))(b7)
        b7 = _conv(192, (7, 1), "branch7x7_3", padding=(3, 0))(b7)
        bd = _conv(c, 1, "branch7x7dbl_1")(x)
        for i, (features, kernel) in enumerate(((c, (7, 1)), (c, (1, 7)), (c, (7, 1)), (192, (1, 7))), start=2):
            bd = _conv(features, kernel, f"branch7x7dbl_{i}", padding=(kernel[0] // 2, kernel[1] // 2))(bd)
        bp = _conv(192, 1, "branch_pool")(_pool_3x3_same(x, self.pool))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = _conv(320, 3, "branch3x3_2", stride=2)(_conv(192, 1, "branch3x3_1")(x))
        b7 = _conv(192, 1, "branch7x7x3_1")(x)
        b7 = _conv(192, (1, 7), "branch7x7x3_2", padding=(0, 3))(b7)
        b7 = _conv(192, (7, 1), "branch7x7x3_3", padding=(3, 0))(b7)
        b7 = _conv(192, 3, "branch7x7x3_4", stride=2)(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(nn.Module):
    pool: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def split_1x3_3x1(y: jax.Array, prefix: str) -> jax.Array:
            return jnp.concatenate([_conv(384, (1, 3), f"{prefix}a", padding=(0, 1))(y),
                                    _conv(384, (3, 1), f"{prefix}b", padding=(1, 0))(y)], axis=-1)

        b1 = _conv(320, 1, "branch1x1")(x)
        b3 = split_1x3_3x1(_conv(384, 1, "branch3x3_1")(x), "branch3x3_2")
        bd = _conv(384, 3, "branch3x3dbl_2", padding=1)(_conv(448, 1, "branch3x3dbl_1")(x))
        bd = split_1x3_3x1(bd, "branch3x3dbl_3")
        bp = _conv(192, 1, "branch_pool")(_pool_3x3_same(x, self.pool))
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3Features(nn.Module):
    """Images `[B, H, W, 3]` in [0, 1] -> pool3 features `[B, 2048]`.

    Images are resized to 299² (bilinear, torch's `align_corners=False`, as pytorch-fid) unless `resize` is False
    (then H, W >= 75), and mapped to [-1, 1]: the input both weight sets expect (torchvision's `transform_input`
    turns ImageNet-normalised input into exactly 2x - 1).
    """

    variant: str = "pytorch_fid"
    resize: bool = True

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if self.variant not in VARIANTS:
            raise ValueError(f"Inception variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.resize:
            images = resize_bilinear(images, (INPUT_SIZE, INPUT_SIZE))
        elif min(images.shape[1:3]) < MIN_INPUT_SIZE:
            raise ValueError(f"Inception-v3 needs images of at least {MIN_INPUT_SIZE}², got {images.shape[1:3]}")
        fid = self.variant == "pytorch_fid"
        pool_a = pool_c = pool_e1 = "avg_valid_only" if fid else "avg"
        pool_e2 = "max" if fid else "avg"
        x = 2 * images - 1
        x = _conv(32, 3, "Conv2d_1a_3x3", stride=2)(x)
        x = _conv(32, 3, "Conv2d_2a_3x3")(x)
        x = _conv(64, 3, "Conv2d_2b_3x3", padding=1)(x)
        x = _max_pool_3x3_stride2(x)
        x = _conv(80, 1, "Conv2d_3b_1x1")(x)
        x = _conv(192, 3, "Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_stride2(x)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, pool_a, name=name)(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(channels, pool_c, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(pool_e1, name="Mixed_7b")(x)
        x = InceptionE(pool_e2, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))

