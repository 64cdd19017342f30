"""Relative motion transfer: the source keeps its face shape and takes the driver's change, scaled to its size."""

import numpy as np
import pytest

from metaportrait_jax.ops.retarget import face_spread, motion_targets, relative_landmarks


def _face(seed: int, points: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.3, 0.7, (points, 2))


def test_reference_frame_maps_to_the_source_and_motion_is_scaled():
    source = _face(0)
    driver = 0.5 + 2.0 * (_face(1) - 0.5)  # a face twice the source's size (up to its own shape)
    scale = face_spread(source) / face_spread(driver)
    shift = np.asarray([0.03, -0.02])
    smile = np.zeros_like(driver)
    smile[:5, 0] = 0.04  # a few points move: an expression
    frames = np.stack([driver, driver + shift, driver + smile])
    out = relative_landmarks(source, frames, frames[0])
    assert out.shape == (3, 30, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], source, atol=1e-6)
    np.testing.assert_allclose(out[1], source + scale * shift, atol=1e-6)
    np.testing.assert_allclose(out[2], source + scale * smile, atol=1e-6)
    # The driver's own face shape never reaches the result: only differences do.
    assert np.abs(out[2] - frames[2]).max() > 0.1


def test_the_drivers_position_does_not_matter():
    source, driver = _face(2), _face(3)
    frames = np.stack([driver, driver + 0.01, driver * 1.02])
    moved = frames + np.asarray([0.2, -0.1])
    np.testing.assert_allclose(relative_landmarks(source, moved, moved[0]),
                               relative_landmarks(source, frames, frames[0]), atol=1e-6)


def test_motion_targets_and_bad_input():
    source, frames = _face(4), np.stack([_face(5), _face(6)])
    np.testing.assert_allclose(motion_targets(source, frames, "absolute"), frames, atol=1e-7)
    np.testing.assert_allclose(motion_targets(source, frames, "relative")[0], source, atol=1e-6)
    with pytest.raises(ValueError, match="motion must be one of"):
        motion_targets(source, frames, "mirror")
    with pytest.raises(ValueError, match="must all be"):
        relative_landmarks(source, frames[:, :10], frames[0])
    with pytest.raises(ValueError, match="coincide"):
        relative_landmarks(source, frames, np.zeros_like(source))
