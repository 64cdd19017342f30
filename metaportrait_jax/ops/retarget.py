"""Motion transfer between faces of different shape: relative landmark motion (cross-identity reenactment).

A driving face's landmarks carry its own identity (face shape, eye spacing). Relative transfer keeps the source's
shape and applies only the driving motion: each frame's landmarks become the source's own landmarks moved by the
driving frame's change from the driving reference frame, with that change rescaled to the source face's size.
"""

import numpy as np

MOTIONS = ("relative", "absolute")


def face_spread(landmarks: np.ndarray) -> float:
    """RMS distance of `[N, 2]` landmarks from their centroid: the face's size, in landmark units."""
    points = np.asarray(landmarks, np.float64)
    return float(np.sqrt(np.mean(np.sum((points - points.mean(axis=0)) ** 2, axis=-1))))


def relative_landmarks(source: np.ndarray, driving: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`source [N, 2]`, `driving [T, N, 2]`, `reference [N, 2]` (the driving frame the source is taken to match,
    usually the first) -> `[T, N, 2]` float32: source + s·(driving_t − reference), s = spread(source) /
    spread(reference).

    Differences remove the driving face's position; s aligns its scale to the source's. The reference frame itself
    maps to the source's landmarks exactly.
    """
    source = np.asarray(source, np.float64)
    driving = np.asarray(driving, np.float64)
    reference = np.asarray(reference, np.float64)
    if source.shape != reference.shape or driving.shape[1:] != source.shape:
        raise ValueError(f"relative_landmarks: source {source.shape}, reference {reference.shape} and driving frames "
                         f"{driving.shape[1:]} must all be [N, 2]")
    reference_spread = face_spread(reference)
    if reference_spread == 0:
        raise ValueError("relative_landmarks: the reference landmarks all coincide; they cannot give a scale")
    scale = face_spread(source) / reference_spread
    return (source + scale * (driving - reference)).astype(np.float32)


def motion_targets(source: np.ndarray, driving: np.ndarray, motion: str) -> np.ndarray:
    """The landmarks to animate `source [N, 2]` with, per driving frame `[T, N, 2]`: "relative" (see
    `relative_landmarks`, reference = the first driving frame) or "absolute" (the driving landmarks themselves, as in
    self-reconstruction, where source and driving are the same face in the same framing)."""
    if motion == "relative":
        return relative_landmarks(source, driving, driving[0])
    if motion == "absolute":
        return np.asarray(driving, np.float32)
    raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
