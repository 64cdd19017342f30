import hashlib

import numpy as np
import pytest

from metaportrait_jax.ops import rasterize, topology
from metaportrait_jax.ops.topology import Topology


def test_official_palette_check_values():
    colors = topology.official_palette(616)
    assert colors.shape == (616, 3)
    assert colors[:6].tolist() == [[203, 116, 0], [203, 29, 145], [116, 87, 116], [87, 0, 203], [145, 0, 203],
                                   [29, 145, 116]]
    assert colors[-1].tolist() == [174, 58, 87]
    assert hashlib.md5(str(colors.tolist()).encode()).hexdigest() == "6057ce2a5e9055aff4fdbfc679d9b7ce"


def test_palette_leaves_global_random_state_alone():
    import random
    random.seed(123)
    expected = random.random()
    random.seed(123)
    topology.official_palette(616)
    assert random.random() == expected


def test_dense669_structure():
    t = topology.get_topology("dense669")
    assert t.num_points == 669 and len(t.edges) == 616
    assert len(np.unique(t.edges)) == 582 and t.edges.max() == 662
    assert len({tuple(sorted(e)) for e in t.edges.tolist()}) == 616
    assert len(t.subset) == 58 and t.subset.max() == 660 and t.subset[0] == 521 and t.subset[-1] == 74
    assert t.gaze_rows == tuple(range(29, 37)) and t.num_gaze == 8


def test_subset_masks_and_gaze():
    t = topology.get_topology("dense669")
    points = np.random.default_rng(0).uniform(0.3, 0.7, size=(669, 2)).astype(np.float32)
    sub = topology.landmark_subset(points, t)
    np.testing.assert_allclose(sub[0], 2 * points[521] - 1)
    np.testing.assert_array_equal(topology.gaze_points(sub, t), sub[29:37])
    mouth = topology.mouth_mask(sub, t, 64, 64)
    x0 = int((sub[14, 0] + 1) * 32)
    y0 = int((sub[56, 1] + 1) * 32)
    assert mouth.shape == (64, 64, 1) and mouth.dtype == np.float32
    if int((sub[15, 0] + 1) * 32) >= x0 and int((sub[57, 1] + 1) * 32) >= y0:
        assert mouth[y0, x0, 0] == 1
    assert topology.eye_mask(sub, t, 64, 64).sum() > 0
    with pytest.raises(ValueError, match="669"):
        topology.landmark_subset(points[:10], t)


def test_unknown_topology_and_bad_fields():
    with pytest.raises(ValueError, match="available: .*dense669"):
        topology.get_topology("nope")
    with pytest.raises(ValueError, match="edges"):
        Topology("bad", 3, np.asarray([[0, 5]]), np.zeros((1, 3), np.uint8), np.asarray([0, 1]),
                 (((0, 1), (0, 1)),), ((0, 1), (0, 1)), (0,))


def _two_edge_topology(colors):
    return Topology("cross", 4, np.asarray([[0, 1], [2, 3]], np.int32), np.asarray(colors, np.uint8),
                    np.arange(4, dtype=np.int32), (((0, 1), (0, 1)),), ((0, 1), (0, 1)), (0,))


def test_line_blending_follows_opencv_in_file_order():
    # LINE_AA alpha-blends each line into the canvas: where two lines cross, the later one dominates, so the edge
    # order of the topology changes the pixels (spec §1.3).
    points = np.asarray([[0.0, 0.5], [1.0, 0.5], [0.5, 0.0], [0.5, 1.0]])
    first = rasterize.draw_landmark_lines(points, _two_edge_topology([[185, 105, 0], [21, 107, 86]]), 32)
    second = rasterize.draw_landmark_lines(points, _two_edge_topology([[21, 107, 86], [185, 105, 0]]), 32)
    assert first[16, 4, 2] == 0 and first[16, 4, 0] > 100          # away from the crossing: only the red line
    assert first[16, 16, 2] > first[16, 16, 0] / 2                  # crossing: the later (teal) line on top
    assert second[16, 16, 0] > second[16, 16, 2] * 2                # reversed order: the red line on top
    assert not np.array_equal(first[16, 16], second[16, 16])


def test_line_image_truncates_coordinates_and_validates():
    t = _two_edge_topology([[255, 255, 255], [0, 0, 0]])
    # 0.999*8 = 7.99 truncates to pixel 7; a horizontal line on row int(0.26*8)=2.
    points = np.asarray([[0.0, 0.26], [0.999, 0.26], [0.0, 0.0], [0.0, 0.0]])
    img = rasterize.landmark_line_image(points, t, 8)
    assert img.dtype == np.float32 and 0 < img.max() <= 1.0
    assert (img[:, 3, 0].argmax() == 2) and img[5:, :, 0].max() == 0.0
    moved = rasterize.landmark_line_image(points + [0, 0.124], t, 8)  # 0.384*8 = 3.07 still on row 3
    assert moved[:, 3, 0].argmax() == 3
    with pytest.raises(ValueError, match=r"\[4, 2\]"):
        rasterize.draw_landmark_lines(points[:3], t, 8)
    with pytest.raises(ValueError, match="non-finite"):
        rasterize.draw_landmark_lines(np.full((4, 2), np.nan), t, 8)


def test_dense669_line_image_colours_come_from_palette():
    t = topology.get_topology("dense669")
    points = np.random.default_rng(1).uniform(0.1, 0.9, size=(669, 2))
    img = rasterize.draw_landmark_lines(points, t, 64)
    assert img.shape == (64, 64, 3) and img.any()


def test_mediapipe478_structure():
    t = topology.get_topology("mediapipe478")
    assert t.num_points == 478 and len(t.edges) == 157 and len(t.subset) == 58 and len(set(t.subset.tolist())) == 58
    assert len({tuple(sorted(e)) for e in t.edges.tolist()}) == 157
    assert t.colors.tolist() == topology.official_palette(157).tolist()
    landmark = t.subset.tolist()
    assert sorted(landmark[r] for r in t.gaze_rows) == [469, 470, 471, 472, 474, 475, 476, 477]
    # Right eye: corners 33/133, lids 159/145; left eye: corners 362/263, lids 386/374; mouth corners 61/291, lips 0/17.
    assert [[[landmark[r] for r in pair] for pair in box] for box in t.eye_boxes] == [[[33, 133], [159, 145]],
                                                                                      [[362, 263], [386, 374]]]
    assert [[landmark[r] for r in pair] for pair in t.mouth_box] == [[61, 291], [0, 17]]


def test_mediapipe478_edges_are_mediapipes_connection_sets():
    pytest.importorskip("mediapipe")
    from mediapipe.python.solutions import face_mesh_connections as mp_sets

    expected = set().union(mp_sets.FACEMESH_CONTOURS, mp_sets.FACEMESH_IRISES, mp_sets.FACEMESH_NOSE)
    shipped = [tuple(e) for e in topology.get_topology("mediapipe478").edges.tolist()]
    assert len(shipped) == len(set(shipped)) and set(shipped) == expected
