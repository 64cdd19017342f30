import dataclasses

import cv2
import numpy as np
import pytest

from metaportrait_jax.data import synthetic
from metaportrait_jax.ops import topology
from metaportrait_jax.ops.synthetic_layout import synthetic_layout


def _identity(seed=0, **changes):
    return dataclasses.replace(synthetic.sample_identity(np.random.default_rng(seed)), **changes)


def _motion(frames, **tracks):
    """Neutral motion with some tracks set (angles in degrees)."""
    values = {f.name: np.zeros(frames, np.float32) for f in dataclasses.fields(synthetic.Motion)}
    for name, value in tracks.items():
        value = np.broadcast_to(np.asarray(value, np.float32), (frames,))
        values[name] = np.radians(value).astype(np.float32) if name in ("yaw", "pitch", "roll") else value
    return synthetic.Motion(**values)


def _grid_row(azimuth, elevation):
    lay = synthetic_layout()
    return next(i for i, (f, u, v) in enumerate(zip(lay.feature, lay.u, lay.v))
                if f == "grid" and np.isclose(u, azimuth) and np.isclose(v, elevation))


def test_render_is_deterministic_with_documented_shapes():
    rng = np.random.default_rng(3)
    identity, motion = synthetic.sample_identity(rng), synthetic.sample_motion(rng, 5)
    first, second = synthetic.render_clip(identity, motion, 32), synthetic.render_clip(identity, motion, 32)
    assert synthetic.NUM_LANDMARKS >= 300
    expected = {"image": ((5, 32, 32, 3), np.uint8), "landmarks": ((5, synthetic.NUM_LANDMARKS, 2), np.float32),
                "visibility": ((5, synthetic.NUM_LANDMARKS), np.bool_), "flow": ((5, 32, 32, 2), np.float32)}
    for key, (shape, dtype) in expected.items():
        assert first[key].shape == shape and first[key].dtype == dtype, key
        np.testing.assert_array_equal(first[key], second[key])
    assert np.all(first["flow"][0] == 0) and np.abs(first["flow"][1:]).max() > 0
    visible = first["landmarks"][first["visibility"]]
    assert visible.min() >= 0 and visible.max() <= 1 and first["visibility"].mean() > 0.5
    assert synthetic.sample_identity(np.random.default_rng(3)) == identity
    assert not np.array_equal(synthetic.sample_motion(rng, 5).yaw, motion.yaw)


def test_sampled_motion_is_bounded_and_talks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = synthetic.sample_motion(rng, 250)
        assert m.num_frames == 250 and m.yaw.dtype == np.float32
        for angle in (m.yaw, m.pitch, m.roll):
            assert np.abs(angle).max() < np.radians(30)
        for track in (m.jaw, m.smile, m.blink):
            assert track.min() >= 0 and track.max() <= 1
        assert np.abs(np.diff(m.yaw)).max() < np.radians(3)  # smooth
        blinks = np.flatnonzero(np.diff((m.blink > 0.9).astype(int)) == 1)
        assert 1 <= len(blinks) <= 8
        spectrum, hz = np.abs(np.fft.rfft(m.jaw - m.jaw.mean())), np.fft.rfftfreq(250, 1 / synthetic.FPS)
        peak = hz[hz > 1.5][spectrum[hz > 1.5].argmax()]  # syllables, above the talk / pause envelope
        assert 2 <= peak <= 6, peak
    with pytest.raises(ValueError, match="length"):
        synthetic.Motion(*[np.zeros(3)] * 9, np.zeros(4))


def test_turning_hides_the_far_side():
    out = synthetic.render_clip(_identity(1), _motion(3, yaw=[-25, 0, 25]), 64)
    plus_x, minus_x = _grid_row(1.4, -0.4), _grid_row(-1.4, -0.4)
    # Yaw > 0 turns the nose to image right, showing the head's -x side and hiding its +x side.
    assert out["visibility"][0, plus_x] and not out["visibility"][2, plus_x]
    assert out["visibility"][2, minus_x] and not out["visibility"][0, minus_x]
    assert out["landmarks"][2, _grid_row(0.0, 0.8), 0] > out["landmarks"][0, _grid_row(0.0, 0.8), 0]


def _flow_warp(previous, flow):
    """Bilinear sample of `previous` at p + flow."""
    size = previous.shape[0]
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).astype(np.float32) + flow
    return cv2.remap(previous.astype(np.float32), grid[..., 0], grid[..., 1], cv2.INTER_LINEAR)


def _warp_ratio(out, t):
    """Mean |frame t - warped frame t-1| over |frame t - frame t-1| on foreground pixels away from the silhouette
    (where (dis)occluded pixels have no source in frame t-1)."""
    flow, current, previous = out["flow"][t], out["image"][t].astype(np.float32), out["image"][t - 1]
    inner = cv2.erode((np.abs(flow).sum(-1) > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return np.abs(_flow_warp(previous, flow) - current)[inner].mean() / np.abs(previous - current)[inner].mean()


def test_flow_warps_previous_frame_onto_current_and_follows_landmarks(monkeypatch):
    frames, size = 5, 64
    rigid = dict(yaw=np.linspace(-10, 2, frames), pitch=np.linspace(6, -6, frames), roll=np.linspace(-3, 5, frames),
                 tx=np.linspace(0, 0.06, frames), ty=np.linspace(0, -0.03, frames))
    talking = dict(rigid, jaw=np.linspace(0, 0.4, frames), smile=np.linspace(0.2, 0.5, frames),
                   gaze_x=np.linspace(-0.3, 0.3, frames), blink=[0, 0, 0.3, 0.6, 0])
    out = synthetic.render_clip(_identity(2), _motion(frames, **talking), size)
    for t in range(1, frames):
        assert _warp_ratio(out, t) < 0.6, t
        both = out["visibility"][t] & out["visibility"][t - 1]
        now = out["landmarks"][t, both] * size - 0.5  # continuous pixel coordinates
        sampled = np.stack([cv2.remap(out["flow"][t, ..., c], now[:, :1], now[:, 1:], cv2.INTER_LINEAR)[:, 0]
                            for c in (0, 1)], -1)
        error = np.linalg.norm(now + sampled - (out["landmarks"][t - 1, both] * size - 0.5), axis=-1)
        assert np.median(error) < 0.05 and np.percentile(error, 90) < 0.5, (t, np.median(error), error.max())
    # The fixed light shades a turning head differently, which no flow can explain: without it, warping does
    # better than halve the error even at 64².
    monkeypatch.setattr(synthetic, "AMBIENT", 1.0)
    monkeypatch.setattr(synthetic, "DIFFUSE", 0.0)
    for seed in range(3):
        out = synthetic.render_clip(_identity(seed), _motion(frames, **rigid), size)
        assert max(_warp_ratio(out, t) for t in range(1, frames)) < 0.5, seed


def test_side_mark_shows_only_when_turned():
    base = _identity(4, marks=())
    marked = dataclasses.replace(base, marks=((1.7, -0.4, 0.08, 0.0),))  # a mole on the +x side, behind the cheek
    motion = _motion(3, yaw=[-25, 0, 25])
    plain, mole = synthetic.render_clip(base, motion, 64)["image"], synthetic.render_clip(marked, motion, 64)["image"]
    changed = np.abs(plain.astype(int) - mole).sum(-1) > 20
    assert changed[0].sum() >= 2 and not changed[1].any() and not changed[2].any()


def test_teeth_appear_only_with_the_jaw_open():
    identity = _identity(5, skin=(0.4, 0.26, 0.18), teeth_gap=False)
    out = synthetic.render_clip(identity, _motion(2, jaw=[0, 1]), 96)
    lips = np.asarray(synthetic_layout().groups["lip_outer"])
    for t, open_ in ((0, False), (1, True)):
        (x0, y0), (x1, y1) = (out["landmarks"][t, lips] * 96).min(0).astype(int), \
            (out["landmarks"][t, lips] * 96).max(0).astype(int)
        mouth = out["image"][t, y0:y1 + 1, x0:x1 + 1].astype(int)
        white = (mouth.min(-1) > 150) & (mouth.max(-1) - mouth.min(-1) < 60)
        assert white.any() == open_, (t, white.sum())


def test_synthetic_topology_and_gaze_rows():
    t = topology.get_topology("synthetic")
    assert t.num_points == synthetic.NUM_LANDMARKS and t.num_gaze == 8
    assert len({tuple(sorted(e)) for e in t.edges.tolist()}) == len(t.edges) and t.colors.shape == (len(t.edges), 3)
    assert len(np.unique(t.subset)) == len(t.subset)
    out = synthetic.render_clip(_identity(6), _motion(3, gaze_x=[-1, 1, 1], blink=[0, 0, 1]), 64)
    sub = topology.landmark_subset(out["landmarks"], t)
    gaze = topology.gaze_points(sub, t)
    assert np.all(gaze[1, :, 0] - gaze[0, :, 0] > 0.02)  # the iris moved right in both eyes
    (left, right), (top, bottom) = t.eye_boxes[0]
    np.testing.assert_allclose(sub[1, [left, right, top, bottom]], sub[0, [left, right, top, bottom]], atol=1e-6)
    assert sub[0, left, 0] < sub[0, right, 0] and sub[0, top, 1] < sub[0, bottom, 1]
    (left, right), (top, bottom) = t.mouth_box
    assert sub[0, left, 0] < sub[0, right, 0] and sub[0, top, 1] < sub[0, bottom, 1]
    iris = t.subset[list(t.gaze_rows)]
    # Lids cover the top and bottom of the iris; a blink hides all of it.
    assert out["visibility"][1, iris[::2]].all() and not out["visibility"][2, iris].any()
    assert topology.eye_mask(sub[0], t, 64, 64).sum() > 0 and topology.mouth_mask(sub[0], t, 64, 64).sum() > 0


def test_identity_vectors():
    rng = np.random.default_rng(7)
    a, b = synthetic.sample_identity(rng), synthetic.sample_identity(rng)
    va = synthetic.identity_vector(a)
    assert va.shape == (64,) and va.dtype == np.float32 and np.isclose(np.linalg.norm(va), 1, atol=1e-5)
    np.testing.assert_array_equal(va, synthetic.identity_vector(dataclasses.replace(a)))
    assert abs(float(va @ synthetic.identity_vector(b))) < 0.9
    assert synthetic.identity_vector(a, 256).shape == (256,)


def test_preview_grid_shape():
    grid = synthetic.preview_grid(2, 3, 32, seed=0)
    assert grid.shape == (64, 96, 3) and grid.dtype == np.uint8
