"""Landmark layout of the synthetic heads (`metaportrait_jax.data.synthetic`): which surface points, in which order.

Numpy-only and free of data/ imports, so that `ops.topology` builds the `synthetic` topology from it and the renderer
resolves the same points on each identity's face.

Each landmark is (feature, side, u, v). `feature` names an identity-dependent facial curve that the renderer turns into
material surface coordinates; `u` in [-1, 1] runs along it (head-frame -x to +x for horizontal curves, top to bottom
for vertical ones); `side` is -1 / +1 for the feature on the head-frame -x / +x half (image left / right when facing
the camera), 0 on the midline. "iris" points are (u, v) = unit offsets from the iris centre (x right, y up); "grid"
points are fixed surface coordinates (u = azimuth, v = elevation, radians) on the cheeks, forehead, scalp and sides.
"""

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class SyntheticLayout:
    feature: tuple[str, ...]          # [N]
    side: np.ndarray                  # [N] int8
    u: np.ndarray                     # [N] float32
    v: np.ndarray                     # [N] float32
    groups: dict[str, tuple[int, ...]]  # named rows, in drawing order
    edges: np.ndarray                 # [E, 2] int32

    @property
    def num_points(self) -> int:
        return len(self.feature)


# Grid of plain surface points; the central face (eyes, nose, mouth) is covered by the feature curves instead.
GRID_AZIMUTH = np.round(np.arange(-2.0, 2.01, 0.2), 6)
GRID_ELEVATION = np.round(np.arange(-0.8, 1.21, 0.2), 6)


def _in_face_centre(azimuth: float, elevation: float) -> bool:
    return abs(azimuth) < 0.7 and -0.9 < elevation < 0.5


@functools.cache
def synthetic_layout() -> SyntheticLayout:
    feature, side, u, v = [], [], [], []
    groups: dict[str, tuple[int, ...]] = {}
    closed: set[str] = set()

    def add(name, feat, s, us, vs=None):
        start = len(feature)
        for i, ui in enumerate(us):
            feature.append(feat)
            side.append(s)
            u.append(ui)
            v.append(0.0 if vs is None else vs[i])
        groups[name] = groups.get(name, ()) + tuple(range(start, len(feature)))

    add("jaw", "jaw", 0, np.linspace(-1, 1, 17))
    add("hairline", "hairline", 0, np.linspace(-1, 1, 9))
    for s, tag in ((-1, "l"), (1, "r")):
        add(f"brow_{tag}", "brow_upper", s, np.linspace(-1, 1, 5))
        add(f"brow_{tag}", "brow_lower", s, np.linspace(1, -1, 5))
        closed.add(f"brow_{tag}")
        add(f"eye_{tag}", "eye_corner", s, [-1.0])
        add(f"eye_{tag}", "lid_upper", s, np.linspace(-0.75, 0.75, 7))
        add(f"eye_{tag}", "eye_corner", s, [1.0])
        add(f"eye_{tag}", "lid_lower", s, np.linspace(0.75, -0.75, 7))
        closed.add(f"eye_{tag}")
        # Left, top, right, bottom of the iris (the gaze points), then its centre.
        add(f"iris_{tag}", "iris", s, [-1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, -1.0])
        closed.add(f"iris_{tag}")
        add(f"iris_centre_{tag}", "iris", s, [0.0], [0.0])
    add("nose_ridge", "nose_ridge", 0, np.linspace(-1, 1, 7))
    add("nose_base", "nose_base", 0, np.linspace(-1, 1, 9))
    add("lip_outer", "lip_outer_upper", 0, np.linspace(-1, 1, 11))
    add("lip_outer", "lip_outer_lower", 0, np.linspace(0.8, -0.8, 9))
    closed.add("lip_outer")
    add("lip_inner_upper", "lip_inner_upper", 0, np.linspace(-0.75, 0.75, 7))
    add("lip_inner_lower", "lip_inner_lower", 0, np.linspace(0.75, -0.75, 7))
    outer = groups["lip_outer"]
    groups["lip_inner"] = (outer[0], *groups.pop("lip_inner_upper"), outer[10], *groups.pop("lip_inner_lower"))
    closed.add("lip_inner")

    grid_rows = {}
    for i, az in enumerate(GRID_AZIMUTH):
        for j, el in enumerate(GRID_ELEVATION):
            if not _in_face_centre(az, el):
                grid_rows[i, j] = len(feature)
                add("grid", "grid", 0, [float(az)], [float(el)])

    edges = []
    for name, rows in groups.items():
        if name == "grid" or len(rows) < 2:
            continue
        edges += list(zip(rows[:-1], rows[1:]))
        if name in closed:
            edges.append((rows[-1], rows[0]))
    for (i, j), row in grid_rows.items():  # grid lines along azimuth and elevation
        edges += [(row, grid_rows[n]) for n in ((i + 1, j), (i, j + 1)) if n in grid_rows]

    return SyntheticLayout(
        feature=tuple(feature), side=np.asarray(side, np.int8), u=np.asarray(u, np.float32),
        v=np.asarray(v, np.float32), groups=groups, edges=np.asarray(edges, np.int32))


def row(group: str, index: int) -> int:
    """Landmark row of the `index`-th point of a named group."""
    return synthetic_layout().groups[group][index]
