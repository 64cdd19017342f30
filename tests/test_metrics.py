"""Quality measures: known values and the warping error's use of the flow."""

import numpy as np
import pytest

from metaportrait_jax.data import synthetic
from metaportrait_jax.eval import metrics


def test_psnr_ssim_l1_known_values():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    b = np.clip(a + 0.1, 0, 1)
    assert np.allclose(metrics.psnr(a, a), np.inf) or np.all(metrics.psnr(a, a) > 100)
    mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(metrics.psnr(a, b), -10 * np.log10(mse), rtol=1e-5)
    np.testing.assert_allclose(metrics.ssim(a, a), 1.0, atol=1e-5)
    assert np.all(metrics.ssim(a, b) < 1)
    np.testing.assert_allclose(metrics.l1(a, b), np.mean(np.abs(a - b), axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(metrics.psnr((a * 255).astype(np.uint8), (a * 255).astype(np.uint8)),
                               metrics.psnr(a, a))


def test_warping_error_uses_the_flow():
    # A smooth pattern moving 2 px to the right per frame: its backward flow is (-2, 0) everywhere.
    x = np.arange(40, dtype=np.float32)
    pattern = 0.5 + 0.4 * np.sin(x / 3.0)[None, :, None] * np.cos(x / 5.0)[:, None, None]
    frames = np.stack([np.roll(np.broadcast_to(pattern, (40, 40, 3)), 2 * t, axis=1) for t in range(4)])
    flow = np.zeros((4, 40, 40, 2), np.float32)
    flow[..., 0] = -2.0
    right = metrics.temporal_warping_error(frames[:, :, 4:-4], flow[:, :, 4:-4])  # away from the wrap-around
    still = metrics.temporal_warping_error(frames[:, :, 4:-4], np.zeros_like(flow[:, :, 4:-4]))
    assert right.shape == (3,)
    assert np.all(np.asarray(right) < 0.2 * np.asarray(still))  # what remains: the reflected border columns


def test_warping_error_on_a_rendered_clip():
    clip = synthetic.render_clip(synthetic.sample_identity(np.random.default_rng(0)),
                                 synthetic.sample_motion(np.random.default_rng(10), 12), 128)
    error = {name: float(np.mean(metrics.temporal_warping_error(clip["image"], flow)))
             for name, flow in (("true", clip["flow"]), ("zero", 0 * clip["flow"]), ("reversed", -clip["flow"]))}
    # Most pixels are static background; on the moving head the rendered flow explains the change.
    assert error["true"] < 0.95 * error["zero"] < error["reversed"]


def test_warping_error_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one flow per frame"):
        metrics.temporal_warping_error(np.zeros((3, 8, 8, 3)), np.zeros((2, 8, 8, 2)))
