"""The official MetaPortrait losses (spec §3.1), as pure functions of NHWC arrays.

Images are `[B, H, W, 3]` in [0, 1]; masks `[B, H, W, 1]`. Each loss returns a scalar.
"""

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from metaportrait_jax.ops.pyramid import image_pyramid
from metaportrait_jax.ops.resize import subsample_nearest

FeatureFn = Callable[[jax.Array], Sequence[jax.Array]]

PYRAMID_SCALES = (1.0, 0.5, 0.25, 0.125)


def perceptual_loss(features: FeatureFn, prediction: jax.Array, target: jax.Array,
                    scales: Sequence[float] = PYRAMID_SCALES, weights: Sequence[float] = (10.0,) * 5) -> jax.Array:
    """Σ_s Σ_i w_i · mean|V_i(P_s(prediction)) − V_i(P_s(target))|, target features held constant.

    `features` maps `[B, h, w, 3]` to the list of tapped feature maps (e.g. a bound `VGGFeatures`).
    """
    pred_pyramid = image_pyramid(prediction, scales)
    target_pyramid = image_pyramid(target, scales)
    total = jnp.zeros((), jnp.float32)
    for scale in scales:
        pred_features = features(pred_pyramid[scale])
        target_features = features(target_pyramid[scale])
        if len(pred_features) != len(weights):
            raise ValueError(f"perceptual weights: got {len(weights)}, the feature network taps {len(pred_features)}")
        for w, p, t in zip(weights, pred_features, target_features):
            total = total + w * jnp.mean(jnp.abs(p - jax.lax.stop_gradient(t)))
    return total


def _mask_at(mask: jax.Array, scale: float) -> jax.Array:
    """M_s: the mask subsampled from index 0 to pyramid `scale`."""
    return subsample_nearest(mask, round(1 / scale)) if scale != 1 else mask


def mask_denominators(mask: jax.Array, scales: Sequence[float] = PYRAMID_SCALES) -> jax.Array:
    """`[len(scales)]`: Σ M_s + 1e-6, the eye/mouth loss's denominators (mask pixels counted at each pyramid scale)."""
    return jnp.stack([jnp.sum(_mask_at(mask, s)) + 1e-6 for s in scales])


def masked_box_loss(prediction: jax.Array, target: jax.Array, mask: jax.Array,
                    scales: Sequence[float] = PYRAMID_SCALES, weight: float = 50.0,
                    denominators: jax.Array | None = None) -> jax.Array:
    """The eye/mouth loss: weight · Σ_s Σ (P_s(pred) − P_s(target))² · M_s / (Σ M_s + 1e-6).

    The numerator sums over batch, channels and pixels, the denominator counts mask pixels once (as the official
    code does); M_s is the mask subsampled from index 0. `denominators` replaces `mask_denominators(mask)`: for one
    device's share of a batch, the whole batch's divided by the number of shares, so that the shares' mean is the
    whole batch's loss (dividing the pixel counts alone would add the 1e-6 once per share).
    """
    pred_pyramid = image_pyramid(prediction, scales)
    target_pyramid = image_pyramid(target, scales)
    if denominators is None:
        denominators = mask_denominators(mask, scales)
    total = jnp.zeros((), jnp.float32)
    for index, scale in enumerate(scales):
        m = _mask_at(mask, scale)
        diff = (pred_pyramid[scale] - jax.lax.stop_gradient(target_pyramid[scale])) ** 2
        total = total + jnp.sum(diff * m) / denominators[index]
    return weight * total


def generator_gan_loss(fake_logits: jax.Array) -> jax.Array:
    """LSGAN, generator side: mean (1 − D(fake))²."""
    return jnp.mean((1.0 - fake_logits) ** 2)


def discriminator_gan_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """LSGAN, discriminator side: mean[(1 − D(real))² + D(fake)²]."""
    return jnp.mean((1.0 - real_logits) ** 2 + fake_logits ** 2)


def feature_matching_loss(real_features: Sequence[jax.Array], fake_features: Sequence[jax.Array],
                          weights: Sequence[float] = (10.0,) * 4) -> jax.Array:
    """Σ_i w_i · mean|D_i(real) − D_i(fake)|."""
    if not len(real_features) == len(fake_features) == len(weights):
        raise ValueError(f"feature matching: {len(real_features)} real maps, {len(fake_features)} fake maps, "
                         f"{len(weights)} weights")
    total = jnp.zeros((), jnp.float32)
    for w, r, f in zip(weights, real_features, fake_features):
        total = total + w * jnp.mean(jnp.abs(r - f))
    return total


def identity_loss(embedding: jax.Array, source_id: jax.Array, eps: float = 1e-8) -> jax.Array:
    """mean(1 − cos(embedding, source_id)) over the batch: `[B, D]` each (the intent of the official dead code)."""
    cosine = jnp.sum(embedding * source_id, axis=-1) / (
        jnp.linalg.norm(embedding, axis=-1) * jnp.linalg.norm(source_id, axis=-1) + eps)
    return jnp.mean(1.0 - cosine)


def sum_losses(losses: Mapping[str, jax.Array]) -> jax.Array:
    return sum(losses.values(), jnp.zeros((), jnp.float32))
