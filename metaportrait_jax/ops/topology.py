"""Landmark topologies: point count, coloured edges for line images, and the semantic subset the model uses.

A topology's `subset` picks rows of the full landmark array; eye and mouth boxes and gaze points are rows of that
subset (the official code works on a 58-point subset of 669 dense landmarks).
"""

import dataclasses
import functools
import importlib.resources
import random
from collections.abc import Callable

import numpy as np

from metaportrait_jax.ops.landmark_maps import box_mask, box_masks

Box = tuple[tuple[int, int], tuple[int, int]]  # ((x_lo_row, x_hi_row), (y_lo_row, y_hi_row))


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    num_points: int
    edges: np.ndarray      # [E, 2] int32, drawn in this order
    colors: np.ndarray     # [E, 3] uint8, channel 0 = r
    subset: np.ndarray     # [S] int32 rows of the full array
    eye_boxes: tuple[Box, ...]
    mouth_box: Box
    gaze_rows: tuple[int, ...]
    eye_pad: int = 3
    mouth_pad: int = 5

    def __post_init__(self):
        def fail(field, why):
            raise ValueError(f"topology {self.name!r}: {field} {why}")

        if self.edges.ndim != 2 or self.edges.shape[1] != 2:
            fail("edges", f"must be [E, 2], got shape {self.edges.shape}")
        if self.colors.shape != (len(self.edges), 3) or self.colors.dtype != np.uint8:
            fail("colors", f"must be uint8 [{len(self.edges)}, 3], got {self.colors.dtype} {self.colors.shape}")
        if self.edges.size and (self.edges.min() < 0 or self.edges.max() >= self.num_points):
            fail("edges", f"index outside [0, {self.num_points})")
        if self.subset.ndim != 1 or self.subset.min() < 0 or self.subset.max() >= self.num_points:
            fail("subset", f"must be 1-D indices in [0, {self.num_points})")
        rows = [r for box in (*self.eye_boxes, self.mouth_box) for pair in box for r in pair] + list(self.gaze_rows)
        if min(rows) < 0 or max(rows) >= len(self.subset):
            fail("eye_boxes/mouth_box/gaze_rows", f"must be rows of the {len(self.subset)}-point subset")

    @property
    def num_gaze(self) -> int:
        return len(self.gaze_rows)


_FACTORIES: dict[str, Callable[[], Topology]] = {}


def register_topology(name: str, factory: Callable[[], Topology]) -> None:
    _FACTORIES[name] = factory
    get_topology.cache_clear()


def available_topologies() -> list[str]:
    return sorted(_FACTORIES)


@functools.cache
def get_topology(name: str) -> Topology:
    if name not in _FACTORIES:
        raise ValueError(f"unknown landmark topology {name!r}; available: {', '.join(available_topologies())}")
    return _FACTORIES[name]()


def official_palette(num_edges: int) -> np.ndarray:
    """The official edge colours: the last `num_edges` of an RGB lattice, shuffled by Python's `random` seeded 0.

    `random.Random(0)` gives the same sequence as the official `random.seed(0); random.shuffle(...)` without
    touching the global generator.
    """
    step = int(255 / num_edges ** (1 / 3))
    levels = range(0, 255, step)
    colors = [[r, g, b] for r in levels for g in levels for b in levels][-num_edges:]
    random.Random(0).shuffle(colors)
    return np.asarray(colors, np.uint8)


# The official 58-point subset (`dataset.ldmk_idx`, identical in all released configs).
DENSE669_SUBSET = (521, 505, 338, 398, 347, 35, 191, 30, 32, 207, 630, 629, 319, 4, 541, 61, 637, 660, 638, 587, 273,
                   590, 269, 432, 118, 327, 12, 373, 58, 619, 466, 469, 464, 308, 152, 305, 150, 411, 635, 634, 564,
                   250, 443, 129, 364, 322, 49, 7, 361, 105, 434, 120, 500, 186, 575, 261, 636, 74)


def _edge_table(filename: str) -> np.ndarray:
    """`[E, 2]` int32 from a shipped `ops/data` file of "i j" lines."""
    text = importlib.resources.files("metaportrait_jax.ops").joinpath("data", filename).read_text()
    return np.asarray([[int(v) for v in line.split(" ")] for line in text.splitlines() if line.strip()], np.int32)


def _dense669() -> Topology:
    edges = _edge_table("dense_669_connectivity.tsv")
    return Topology(
        name="dense669", num_points=669, edges=edges, colors=official_palette(len(edges)),
        subset=np.asarray(DENSE669_SUBSET, np.int32),
        eye_boxes=(((1, 2), (3, 4)), ((5, 6), (7, 8))), mouth_box=((14, 15), (56, 57)),
        gaze_rows=tuple(range(29, 37)))


register_topology("dense669", _dense669)


def _synthetic() -> Topology:
    """The procedural heads of `data.synthetic`: points and edges from `ops.synthetic_layout`; a 61-point subset of
    jaw, brows, eyes (corners and lids), iris rings (gaze), nose and lips."""
    from metaportrait_jax.ops.synthetic_layout import synthetic_layout

    layout = synthetic_layout()
    groups = layout.groups
    subset = [*groups["jaw"][::2], *groups["brow_l"][:5], *groups["brow_r"][:5],
              *groups["eye_l"][::2], *groups["eye_r"][::2], *groups["iris_l"], *groups["iris_r"],
              *groups["nose_ridge"][::3], *groups["nose_base"][::2],
              *(groups["lip_outer"][i] for i in (0, 2, 5, 8, 10, 13, 15, 17)), *groups["lip_inner"][4::8]]
    at = {row: i for i, row in enumerate(subset)}
    # Eye loops run corner (u = -1), upper lid, corner (u = +1), lower lid; the outer lip loop runs corner, upper
    # lip, corner (index 10), lower lip with its centre at index 15.
    eye_boxes = tuple(((at[groups[g][0]], at[groups[g][8]]), (at[groups[g][4]], at[groups[g][12]]))
                      for g in ("eye_l", "eye_r"))
    lips, edges = groups["lip_outer"], layout.edges
    return Topology(
        name="synthetic", num_points=layout.num_points, edges=edges, colors=official_palette(len(edges)),
        subset=np.asarray(subset, np.int32), eye_boxes=eye_boxes,
        mouth_box=((at[lips[0]], at[lips[10]]), (at[lips[5]], at[lips[15]])),
        gaze_rows=tuple(at[row] for row in (*groups["iris_l"], *groups["iris_r"])))


register_topology("synthetic", _synthetic)

# A 58-point subset of MediaPipe's 478-point face mesh, laid out like the official one: rows 0-7 eye corners and lids
# (subject's right eye, then left), 8-15 the iris rings (gaze), 16-17 iris centres, 18-27 mouth, 28-37 brows,
# 38-39 nose, 40-57 every other face-oval point.
MEDIAPIPE478_SUBSET = (33, 133, 159, 145, 362, 263, 386, 374,
                       469, 470, 471, 472, 474, 475, 476, 477, 468, 473,
                       61, 291, 0, 17, 13, 14, 37, 267, 84, 314,
                       70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
                       1, 6,
                       10, 297, 284, 389, 454, 361, 397, 379, 400, 152, 176, 150, 172, 132, 234, 162, 54, 67)


def _mediapipe478() -> Topology:
    """MediaPipe face mesh with refined irises: contours, irises and nose from `mediapipe478_edges.tsv`."""
    edges = _edge_table("mediapipe478_edges.tsv")
    return Topology(
        name="mediapipe478", num_points=478, edges=edges, colors=official_palette(len(edges)),
        subset=np.asarray(MEDIAPIPE478_SUBSET, np.int32),
        # Image-left corner before image-right corner, upper lid/lip before lower: box bounds as (lo, hi) rows.
        eye_boxes=(((0, 1), (2, 3)), ((4, 5), (6, 7))), mouth_box=((18, 19), (20, 21)),
        gaze_rows=tuple(range(8, 16)))


register_topology("mediapipe478", _mediapipe478)


def landmark_subset(points: np.ndarray, topology: Topology) -> np.ndarray:
    """`[..., N, 2]` in [0, 1] -> `[..., S, 2]` in [-1, 1] (the official `ldmk_proc`)."""
    points = np.asarray(points, np.float32)
    if points.shape[-2:] != (topology.num_points, 2):
        raise ValueError(f"landmarks must be [..., {topology.num_points}, 2] for topology {topology.name!r}, "
                         f"got shape {points.shape}")
    return (2 * points - 1)[..., topology.subset, :]


def gaze_points(subset_points: np.ndarray, topology: Topology) -> np.ndarray:
    """`[..., S, 2]` -> `[..., G, 2]` gaze points."""
    return np.asarray(subset_points)[..., list(topology.gaze_rows), :]


def eye_mask(subset_points: np.ndarray, topology: Topology, height: int, width: int) -> np.ndarray:
    """`[H, W, 1]` float32: both padded eye boxes."""
    return box_masks(subset_points, topology.eye_boxes, height, width, topology.eye_pad)


def mouth_mask(subset_points: np.ndarray, topology: Topology, height: int, width: int) -> np.ndarray:
    """`[H, W, 1]` float32: the padded mouth box."""
    x_rows, y_rows = topology.mouth_box
    return box_mask(subset_points, x_rows, y_rows, height, width, topology.mouth_pad)
