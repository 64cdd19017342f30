"""Landmark line images, drawn with OpenCV exactly as the official data pipeline does.

Anti-aliased cv2 lines alpha-blend where they cross, so the drawing order (the topology's edge order) matters; the
released checkpoint was trained on these images, so they are not re-implemented.
"""

import cv2
import numpy as np

from metaportrait_jax.ops.topology import Topology


def draw_landmark_lines(points: np.ndarray, topology: Topology, size: int) -> np.ndarray:
    """`[N, 2]` (x, y) in [0, 1] -> `[size, size, 3]` uint8 RGB line image (coordinates truncated toward 0)."""
    points = np.asarray(points)
    if points.shape != (topology.num_points, 2):
        raise ValueError(f"landmarks must be [{topology.num_points}, 2] for topology {topology.name!r}, "
                         f"got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("landmarks contain non-finite values")
    pixels = (points * size).astype(np.int64)  # int() truncation, as the official (int(x*256), int(y*256))
    canvas = np.zeros((size, size, 3), np.uint8)
    for (i, j), color in zip(topology.edges, topology.colors):
        cv2.line(canvas, (int(pixels[i, 0]), int(pixels[i, 1])), (int(pixels[j, 0]), int(pixels[j, 1])),
                 tuple(int(c) for c in color), thickness=1, lineType=cv2.LINE_AA)
    return canvas


def landmark_line_image(points: np.ndarray, topology: Topology, size: int) -> np.ndarray:
    """`[size, size, 3]` float32 in [0, 1]."""
    return draw_landmark_lines(points, topology, size).astype(np.float32) / 255
