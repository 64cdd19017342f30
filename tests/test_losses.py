"""The official loss definitions (spec §3.1) against torch formulations, and the VGG feature taps."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from metaportrait_jax import losses
from metaportrait_jax.models.vgg import VGGFeatures, conv_indices
from test_ops import _torch_antialias_downsample, to_torch


def test_masked_box_loss_matches_official_formula():
    rng = np.random.default_rng(0)
    pred = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    drv = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    mask = np.zeros((2, 32, 32, 1), np.float32)
    mask[:, 8:20, 5:17] = 1
    ours = losses.masked_box_loss(jnp.asarray(pred), jnp.asarray(drv), jnp.asarray(mask), scales=(1.0, 0.5, 0.25))
    total = 0.0
    for s in (1.0, 0.5, 0.25):
        p, d = to_torch(pred), to_torch(drv)
        if s != 1:
            p, d = _torch_antialias_downsample(p, s), _torch_antialias_downsample(d, s)
        m = F.interpolate(to_torch(mask), scale_factor=s, mode="nearest") if s != 1 else to_torch(mask)
        total += ((p - d) ** 2 * m).sum() / (m.sum() + 1e-6)
    np.testing.assert_allclose(ours, 50 * total.item(), rtol=1e-5)


def test_gan_and_feature_matching_losses():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(2, 5, 5, 1)), rng.normal(size=(2, 5, 5, 1))
    np.testing.assert_allclose(losses.generator_gan_loss(jnp.asarray(fake)), np.mean((1 - fake) ** 2), rtol=1e-6)
    np.testing.assert_allclose(losses.discriminator_gan_loss(jnp.asarray(real), jnp.asarray(fake)),
                               np.mean((1 - real) ** 2 + fake ** 2), rtol=1e-6)
    fr = [rng.normal(size=(1, 4, 4, 2)) for _ in range(4)]
    ff = [rng.normal(size=(1, 4, 4, 2)) for _ in range(4)]
    expected = sum(10 * np.mean(np.abs(a - b)) for a, b in zip(fr, ff))
    np.testing.assert_allclose(losses.feature_matching_loss(fr, ff), expected, rtol=1e-6)


def test_perceptual_loss_sums_scales_and_taps_and_is_zero_on_equal_images():
    model = VGGFeatures("vgg19")
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(1, 32, 32, 3)), jnp.float32)
    params = model.init(jax.random.key(0), x)
    feats = model.apply(params, x)
    assert [f.shape[-1] for f in feats] == [64, 128, 256, 512, 512]
    assert [f.shape[1] for f in feats] == [32, 16, 8, 4, 2]
    assert conv_indices("vgg19")[:3] == [0, 2, 5] and len(conv_indices("vgg16")) == 13

    def fn(img):
        return model.apply(params, img)

    assert float(losses.perceptual_loss(fn, x, x, scales=(1.0, 0.5))) == 0.0
    y = x[:, ::-1]
    single = [float(losses.perceptual_loss(fn, x, y, scales=(s,))) for s in (1.0, 0.5)]
    np.testing.assert_allclose(float(losses.perceptual_loss(fn, x, y, scales=(1.0, 0.5))), sum(single), rtol=1e-5)
    assert single[0] > 0
