"""The temporal super-resolution network ("spatial-temporal enhancement module"): GFPGAN v1.3 (clean) as a video
model.

Clips `[B, T, h, w, 3]` in [0, 1] become `[B, T, 2h, 2w, 3]` (spec `temporal_sr_model.md` §3):

    bilinear ×2 ─► conv1×1 ─► L × (ResBlock down ─► window) ─► conv3×3 ─► Linear ─► W+ styles (2·log2(size) − 2)
                                   │ skips                                              │
                                   ▼                                                    ▼
                  L × (+ skip ─► ResBlock up ─► window ─► SFT scale, shift) ─► frozen StyleGAN2 decoder (zero noise)

A window mixes each frame with its neighbours: concat [f(t−1), f(t), f(t+1)] on channels (clip ends replicated) →
conv3×3 (3C→3C) → LReLU → conv3×3 (3C→C), added to f(t). Its second conv starts at zero, so a fresh network is
per-frame GFPGAN. Everything else runs on the B·T frames as one batch.

Parameter names follow the official state dict (`conv_body_down_3/conv1/kernel` is `conv_body_down.3.conv1.weight`;
`condition_scale_2/conv1` is `condition_scale.2.0`, `conv2` is `.2`), see `convert/official_sr.py`.

Long clips: `margin` and `valid` let a chunk of a video be computed exactly as inside the whole clip (see
`TemporalSR.__call__`); `eval/enhance.py` uses them.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from metaportrait_jax.models.layers import Conv, leaky_relu
from metaportrait_jax.ops.conv import conv2d
from metaportrait_jax.ops.resize import resize_bilinear

SLOPE = 0.2
DEMODULATION_EPS = 1e-8
STYLE_MLP_LAYERS = 8
lrelu = leaky_relu(SLOPE)


def upsample2(x: jax.Array) -> jax.Array:
    """`[N, H, W, C] -> [N, 2H, 2W, C]`: torch bilinear ×2, align_corners=False."""
    return resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))


def downsample2(x: jax.Array) -> jax.Array:
    """`[N, H, W, C] -> [N, H/2, W/2, C]`: torch bilinear ×0.5 (align_corners=False, no antialiasing) is exactly a
    2×2 average."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def num_levels(out_size: int) -> int:
    """U-Net levels from `out_size` down to 4×4."""
    return int(math.log2(out_size)) - 2


def num_latents(out_size: int) -> int:
    """W+ style vectors the decoder takes: two per resolution from 4² plus one for the last ToRGB."""
    return 2 * int(math.log2(out_size)) - 2


def temporal_depth(model_config: ml_collections.ConfigDict) -> int:
    """Windows an output frame passes through (2 per level), i.e. how many frames on each side it can depend on."""
    return 2 * num_levels(model_config.out_size)


def check_config(model_config: ml_collections.ConfigDict) -> None:
    size = model_config.out_size
    if size < 8 or size & (size - 1):
        raise ValueError(f"out_size must be a power of two >= 8, got {size}")
    if len(model_config.unet_channels) != num_levels(size) + 1:
        raise ValueError(f"unet_channels needs one width per resolution 4..{size} ({num_levels(size) + 1}), got "
                         f"{len(model_config.unet_channels)}")


class ResBlock(nn.Module):
    """GFPGAN's clean residual block: conv-LReLU-resample-conv-LReLU plus a resampled 1×1 skip (no bias)."""

    features: int
    mode: str  # "down" | "up"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        resample = downsample2 if self.mode == "down" else upsample2
        out = lrelu(Conv(x.shape[-1], 3, init="torch_default", name="conv1")(x))
        out = lrelu(Conv(self.features, 3, init="torch_default", name="conv2")(resample(out)))
        skip = Conv(self.features, 1, use_bias=False, init="torch_default", name="skip")(resample(x))
        return out + skip


def neighbour_frames(x: jax.Array, frames: int, lo: jax.Array | int, hi: jax.Array | int) -> jax.Array:
    """`[B·T, H, W, C] -> [B·T, H, W, 3C]`: each frame's [previous, own, next] features along channels.

    Neighbours are clamped to the valid frames [lo, hi) of each clip (the clip ends are replicated there); frames
    outside that range only ever feed each other.
    """
    bt, h, w, c = x.shape
    clips = x.reshape(bt // frames, frames, h, w, c)
    t = jnp.arange(frames)
    previous = jnp.clip(jnp.maximum(t - 1, lo), 0, frames - 1)
    following = jnp.clip(jnp.minimum(t + 1, hi - 1), 0, frames - 1)
    stacked = jnp.concatenate([jnp.take(clips, previous, axis=1), clips, jnp.take(clips, following, axis=1)], -1)
    return stacked.reshape(bt, h, w, 3 * c)


class TemporalWindow(nn.Module):
    """The 3-frame residual window (`ConvReLUConv`); its output conv starts at zero (weight and bias)."""

    @nn.compact
    def __call__(self, x: jax.Array, frames: int, lo: jax.Array | int, hi: jax.Array | int) -> jax.Array:
        c = x.shape[-1]
        y = lrelu(Conv(3 * c, 3, init="torch_default", name="conv1")(neighbour_frames(x, frames, lo, hi)))
        return x + Conv(c, 3, init="zeros", name="conv2")(y)


class SFTHead(nn.Module):
    """conv3×3 → LReLU → conv3×3 (official `condition_scale.i` / `condition_shift.i`, indices 0 and 2)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        return Conv(c, 3, init="torch_default", name="conv2")(lrelu(Conv(c, 3, init="torch_default", name="conv1")(x)))


class ModulatedConv(nn.Module):
    """StyleGAN2's modulated conv in factored form: `conv(x ⊙ s, W) ⊙ d` with one kernel shared by the batch.

    s = A(w) per sample and input channel (affine bias initialised to 1); d[n, o] = (Σ_{i,kh,kw} (W[kh,kw,i,o]·s[n,i])²
    + 1e-8)^{-1/2} when demodulating. Equals the per-sample modulated kernels of the official grouped conv. The
    "clean" variant: no equalised-learning-rate scaling, and `upsample` is bilinear ×2 of the input.
    """

    features: int
    kernel_size: int
    demodulate: bool = True
    upsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, style: jax.Array) -> jax.Array:
        """`x [N, H, W, I]`, `style [N, S]` -> `[N, H', W', features]`."""
        k, cin = self.kernel_size, x.shape[-1]
        s = nn.Dense(cin, kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
                     bias_init=nn.initializers.ones, name="modulation")(style)
        kernel = self.param("kernel", nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
                            (k, k, cin, self.features))
        scaled = x * s[:, None, None, :].astype(x.dtype)
        if self.upsample:  # scaling channels commutes with the (per-channel, linear) resize: do it at low resolution
            scaled = upsample2(scaled)
        y = conv2d(scaled, kernel.astype(x.dtype), 1, k // 2)
        if self.demodulate:
            energy = jnp.square(s) @ jnp.sum(jnp.square(kernel), axis=(0, 1))  # [N, O]
            y = y * jax.lax.rsqrt(energy + DEMODULATION_EPS)[:, None, None, :].astype(x.dtype)
        return y


class StyleConv(nn.Module):
    """Modulated 3×3 conv, ×√2, + noise (zero here; its weight `noise_weight` is kept for the checkpoint), + bias,
    LReLU."""

    features: int
    upsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, style: jax.Array) -> jax.Array:
        self.param("noise_weight", nn.initializers.zeros, (1,))  # multiplies zero noise: no effect
        y = ModulatedConv(self.features, 3, upsample=self.upsample, name="modulated_conv")(x, style) * math.sqrt(2)
        return lrelu(y + self.param("bias", nn.initializers.zeros, (self.features,)))


class ToRGB(nn.Module):
    """Modulated 1×1 conv to RGB without demodulation, + bias, + the bilinearly upsampled previous RGB."""

    @nn.compact
    def __call__(self, x: jax.Array, style: jax.Array, previous: jax.Array | None = None) -> jax.Array:
        rgb = ModulatedConv(3, 1, demodulate=False, name="modulated_conv")(x, style)
        rgb = rgb + self.param("bias", nn.initializers.zeros, (3,))
        return rgb if previous is None else rgb + upsample2(previous)


class UnusedDense(nn.Module):
    """A linear layer's weights (`kernel [in, out]`, `bias`) that the forward never applies."""

    in_features: int
    features: int

    @nn.compact
    def __call__(self) -> None:
        self.param("kernel", nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
                   (self.in_features, self.features))
        self.param("bias", nn.initializers.zeros, (self.features,))


class StyleGAN2Decoder(nn.Module):
    """StyleGAN2 (clean) with SFT on the second half of the channels at every resolution from 8², fed W+ styles.

    The mapping MLP (`style_mlp_*`) is never applied (the styles are given as latents); its weights exist only so
    released checkpoints load and round-trip.
    """

    out_size: int
    style_dim: int
    channels: tuple[int, ...]  # per resolution 4, 8, ..., out_size

    @nn.compact
    def __call__(self, styles: jax.Array, conditions: list[tuple[jax.Array, jax.Array]]) -> jax.Array:
        """`styles [N, num_latents, S]`, (scale, shift) `[N, r, r, channels/2]` per resolution 8..out_size ->
        `[N, out_size, out_size, 3]` in [-1, 1]-ish."""
        for layer in range(1, 2 * STYLE_MLP_LAYERS, 2):  # official Sequential indices of its Linear layers
            UnusedDense(self.style_dim, self.style_dim, name=f"style_mlp_{layer}")()
        constant = self.param("constant_input", nn.initializers.normal(1.0), (4, 4, self.channels[0]))
        h = jnp.broadcast_to(constant.astype(styles.dtype), (styles.shape[0], *constant.shape))
        h = StyleConv(self.channels[0], name="style_conv1")(h, styles[:, 0])
        rgb = ToRGB(name="to_rgb1")(h, styles[:, 1])
        for level, (scale, shift) in enumerate(conditions):
            width = self.channels[level + 1]
            h = StyleConv(width, upsample=True, name=f"style_convs_{2 * level}")(h, styles[:, 2 * level + 1])
            kept, modulated = jnp.split(h, 2, axis=-1)
            h = jnp.concatenate([kept, modulated * scale + shift], axis=-1)  # scale used as is (no 1 + scale)
            h = StyleConv(width, name=f"style_convs_{2 * level + 1}")(h, styles[:, 2 * level + 2])
            rgb = ToRGB(name=f"to_rgbs_{level}")(h, styles[:, 2 * level + 3], rgb)
        return rgb


class TemporalSR(nn.Module):
    """`GFPGANv1Clean_UnetWindow`: the official temporal SR network for `config` (see `models/config.py`)."""

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, clips: jax.Array, margin: int = 0, valid: tuple[jax.Array | int, jax.Array | int] | None = None
                 ) -> jax.Array:
        """`clips [B, T, h, w, 3]` in [0, 1] -> `[B, T − 2·margin, 2h, 2w, 3]` (unclamped, like the official output).

        `valid = (lo, hi)`: only frames [lo, hi) of each clip are video; the windows replicate frames lo and hi − 1
        at the ends as they replicate the clip's first and last frame (default: all T frames). `margin` (static):
        the first and last `margin` frames are context only; the output is frames [margin, T − margin), and every
        layer computes only the frames that those depend on. With margin ≥ `temporal_depth(config)` on each side
        (or reaching the video ends through `valid`), the output equals the frames of the whole video at once.
        """
        cfg = self.config
        check_config(cfg)
        levels = num_levels(cfg.out_size)
        depth = 2 * levels
        b, t = clips.shape[:2]
        if not 0 <= 2 * margin < t:
            raise ValueError(f"margin {margin} leaves no output frame of a {t}-frame clip")
        lo, hi = (0, t) if valid is None else valid
        unet = tuple(cfg.unet_channels)

        def frames_of(x):
            return x.shape[0] // b

        def keep_from(x, offset: int, needed: int) -> tuple[jax.Array, int]:
            """Drops the frames before clip frame `needed` (and as many at the end): x covers [offset, t − offset)."""
            cut = max(0, needed - offset)
            if cut == 0:
                return x, offset
            per_clip = x.reshape(b, frames_of(x), *x.shape[1:])[:, cut:frames_of(x) - cut]
            return per_clip.reshape(-1, *x.shape[1:]), offset + cut

        window_index = 0

        def window(name: str, x: jax.Array, offset: int) -> tuple[jax.Array, int]:
            nonlocal window_index
            x = TemporalWindow(name=name)(x, frames_of(x), lo - offset, hi - offset)
            # Frames this window's output must still be right for: those the remaining windows need.
            window_index += 1
            return keep_from(x, offset, margin - (depth - window_index))

        x = clips.reshape(b * t, *clips.shape[2:]) * 2 - 1
        if x.shape[1] != cfg.out_size:
            x = upsample2(x)  # fixed ×2, as in the official network
        feature = lrelu(Conv(unet[-1], 1, init="torch_default", name="conv_body_first")(x))
        offset, skips = 0, []
        for level in range(levels):
            width = unet[levels - level - 1]
            feature = ResBlock(width, "down", name=f"conv_body_down_{level}")(feature)
            feature, offset = window(f"window_down_{level}", feature, offset)
            skips.append((feature, offset))
        feature = lrelu(Conv(unet[0], 3, init="torch_default", name="final_conv")(feature))
        # Styles and SFT maps are needed only for the output frames.
        flat, _ = keep_from(feature, offset, margin)
        flat = jnp.transpose(flat, (0, 3, 1, 2)).reshape(flat.shape[0], -1)  # torch's (C, H, W) flatten order
        latents = num_latents(cfg.out_size)
        styles = nn.Dense(latents * cfg.style_dim, kernel_init=_torch_dense_init(flat.shape[-1]),
                          bias_init=_torch_dense_init(flat.shape[-1]), name="final_linear")(flat)
        styles = styles.reshape(-1, latents, cfg.style_dim)
        conditions = []
        for level in range(levels):
            skip, skip_offset = skips[levels - level - 1]
            skip, _ = keep_from(skip, skip_offset, offset)
            feature = ResBlock(unet[level + 1], "up", name=f"conv_body_up_{level}")(feature + skip)
            feature, offset = window(f"recurrent_forward_{level}", feature, offset)
            if self.is_initializing():  # the official forward computes these and throws them away
                Conv(3, 1, init="torch_default", name=f"toRGB_{level}")(feature)
            out_frames, _ = keep_from(feature, offset, margin)
            conditions.append((SFTHead(name=f"condition_scale_{level}")(out_frames),
                               SFTHead(name=f"condition_shift_{level}")(out_frames)))
        decoder = StyleGAN2Decoder(cfg.out_size, cfg.style_dim, tuple(2 * c for c in unet), name="stylegan_decoder")
        image = (decoder(styles, conditions) + 1) / 2
        return image.reshape(b, t - 2 * margin, *image.shape[1:])


def _torch_dense_init(fan_in: int) -> nn.initializers.Initializer:
    bound = 1 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def dummy_clip(model_config: ml_collections.ConfigDict, batch: int = 1, frames: int = 3) -> jax.Array:
    """Zeros of the network's input shape: `[batch, frames, out_size/2, out_size/2, 3]`."""
    side = model_config.out_size // 2
    return jnp.zeros((batch, frames, side, side, 3), jnp.float32)


def init_variables(model_config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
    """Fresh variables `{'params': ...}`: PyTorch default inits, zero window outputs, decoder as GFPGAN builds it."""
    return jax.jit(TemporalSR(model_config).init)(rng, dummy_clip(model_config))

