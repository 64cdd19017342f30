"""Procedural synthetic talking heads in numpy: ray-cast 3-D heads with identity, motion, landmarks and exact flow.

Conventions. Head frame: x = image right at zero pose, y = up, z = towards the camera. The head is a radial surface
over a unit sphere scaled by the identity's semi-axes `A`: p = A·ρ(ω)·ω for unit directions ω. Surface coordinates
are (azimuth a = atan2(ω_x, ω_z), elevation e = asin(ω_y)), radians; the face looks along +z (a = 0). Expressions
slide *material* coordinates over this surface (the jaw drops the lower face, a smile widens and lifts the mouth, the
upper lids slide down over the eyes); the mouth and eye openings are holes in the skin showing the mouth interior
(teeth) and the eyeballs (iris moved by gaze). World: orthographic camera looking along -z, the image spans
[-FRAME_HALF, FRAME_HALF]² with y up; pixel column c covers normalised x in [c/size, (c+1)/size).

Yaw > 0 turns the nose towards image right, pitch > 0 lifts the nose, roll > 0 turns the head counter-clockwise.
"""

import dataclasses
import functools
import math
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from metaportrait_jax.ops.synthetic_layout import synthetic_layout

FPS = 25
FRAME_HALF = 1.55           # world half-extent of the image: the head (~2.1 tall with hair) fills ~2/3 of it
HEAD_Y = 0.14               # world height of the head centre at rest, leaving room for neck and shoulders
PIVOT = (0.0, -0.55, -0.1)  # head-frame point the head turns about (top of the neck)
NECK_RADII, NECK_Z, NECK_TOP = (0.4, 0.42), -0.12, -0.35                 # body frame (world minus translation)
SHOULDER_CENTRE, SHOULDER_RADII = (0.0, -2.1, -0.2), (2.0, 0.85, 1.0)
CAMERA_Z = 4.0              # ray origins; anything of the head is well in front of it
MAX_ANGLE = np.radians(30.0)
LIGHT = np.asarray([-0.45, 0.5, 0.74], np.float32) / np.linalg.norm([-0.45, 0.5, 0.74])
AMBIENT, DIFFUSE = 0.42, 0.68
MARCH_SAMPLES, FALSI_STEPS = 6, 3
JAW_DROP = 0.2              # elevation drop of the chin at jaw = 1
SMILE_WIDEN, SMILE_LIFT = 0.22, 0.07
MAX_MARKS = 3

NUM_LANDMARKS = synthetic_layout().num_points
RGB = tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class Identity:
    axes: tuple[float, float, float]     # head semi-axes (x, y, z), world units
    jaw_taper: float                     # narrowing of the lower face
    chin: float
    cheek: float
    brow_ridge: float
    nose_size: float
    nose_width: float
    nose_tip: float                      # elevation of the nose tip
    ear_size: float
    skin: RGB
    skin_blotch: tuple[float, ...]       # 4 × (azimuth freq, elevation freq, phase, amplitude)
    blush: float
    hair_color: RGB
    hair_front: float                    # hairline elevation at the forehead centre
    hair_temple: float                   # extra recession at the temples
    hair_side: float                     # hairline elevation above the ears
    hair_volume: float
    eye_x: float                         # azimuth of the eye centres (±)
    eye_y: float
    eye_w: float                         # half-width (azimuth) and upper/lower opening (elevation)
    eye_h: float
    iris_color: RGB
    iris_size: float
    brow_color: RGB
    brow_thickness: float
    brow_angle: float
    brow_arch: float
    brow_height: float                   # above the eye centre
    mouth_y: float
    mouth_w: float                       # half-width (azimuth)
    lip_color: RGB
    lip_upper: float
    lip_lower: float
    teeth_gap: bool
    gold_tooth: int                      # tooth column from the centre, or -99 for none
    marks: tuple[tuple[float, float, float, float], ...]  # (azimuth, elevation, size, kind 0 mole / 1 scar / 2 patch)
    glasses: RGB | None                  # frame colour
    earrings: RGB | None
    clothes: RGB
    background: tuple[RGB, RGB]          # top and bottom colours


@dataclasses.dataclass(frozen=True)
class Motion:
    """Per-frame float32 [T] trajectories: angles in radians, jaw/smile/blink in [0, 1] (blink 1 = closed), gaze in
    [-1, 1] (x right, y up), translation in world units."""
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    jaw: np.ndarray
    smile: np.ndarray
    blink: np.ndarray
    gaze_x: np.ndarray
    gaze_y: np.ndarray
    tx: np.ndarray
    ty: np.ndarray

    def __post_init__(self):
        lengths = {len(np.asarray(getattr(self, f.name))) for f in dataclasses.fields(self)}
        if len(lengths) != 1:
            raise ValueError(f"motion trajectories must share one length, got {sorted(lengths)}")

    @property
    def num_frames(self) -> int:
        return len(self.yaw)


def _clamp(x, lo, hi):
    """np.clip without its Python-level overhead (it dominates on the small per-frame arrays)."""
    return np.minimum(np.maximum(x, lo), hi)


# ----------------------------------------------------------------------------------------------------------- identity

_SKIN_LIGHT, _SKIN_DARK = np.asarray([0.96, 0.80, 0.69]), np.asarray([0.36, 0.23, 0.16])
_HAIR = [(0.07, 0.06, 0.05), (0.22, 0.13, 0.07), (0.42, 0.27, 0.13), (0.80, 0.65, 0.38), (0.55, 0.22, 0.08),
         (0.68, 0.68, 0.68), (0.25, 0.30, 0.65)]
_IRIS = [(0.32, 0.18, 0.08), (0.14, 0.09, 0.05), (0.28, 0.48, 0.78), (0.30, 0.52, 0.28), (0.52, 0.42, 0.18),
         (0.50, 0.56, 0.62)]
_LIPSTICK = [(0.70, 0.08, 0.12), (0.80, 0.35, 0.45), (0.45, 0.12, 0.30)]


def _jitter(rng, rgb, amount=0.05) -> RGB:
    return tuple(float(c) for c in _clamp(np.asarray(rgb) + rng.normal(0, amount, 3), 0, 1))


def sample_identity(rng: np.random.Generator) -> Identity:
    """A random identity; the same generator state always gives the same identity."""
    u = rng.uniform
    skin = _jitter(rng, _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * u() ** 1.3, 0.025)
    hair = _jitter(rng, _HAIR[rng.choice(len(_HAIR), p=[0.3, 0.25, 0.17, 0.1, 0.07, 0.07, 0.04])], 0.03)
    lips = _LIPSTICK[rng.integers(3)] if u() < 0.25 else np.asarray(skin) * [0.85, 0.52, 0.52]
    bald = u() < 0.08
    marks = []
    for _ in range(rng.integers(1, MAX_MARKS + 1)):  # behind the cheek line: only seen when the head turns
        marks.append((float(rng.choice([-1, 1]) * u(1.62, 1.78)), float(u(-0.5, -0.3)),
                      float(u(0.045, 0.08)), float(rng.integers(3))))
    base_bg = rng.uniform(0.1, 0.9, 3)
    return Identity(
        axes=(float(u(0.74, 0.84)), float(u(0.98, 1.07)), float(u(0.9, 1.0))), jaw_taper=float(u(0.08, 0.22)),
        chin=float(u(0.02, 0.07)), cheek=float(u(0.02, 0.06)), brow_ridge=float(u(0.02, 0.05)),
        nose_size=float(u(0.75, 1.3)), nose_width=float(u(0.8, 1.3)), nose_tip=float(u(-0.2, -0.14)),
        ear_size=float(u(0.12, 0.2)), skin=skin,
        skin_blotch=tuple(float(v) for _ in range(4) for v in (u(-8, 8), u(-8, 8), u(0, 6.283), u(0.015, 0.045))),
        blush=float(u(0, 0.35)), hair_color=hair,
        hair_front=float(u(0.9, 1.1) if bald else u(0.42, 0.62)), hair_temple=float(u(0, 0.12)),
        hair_side=float(u(-0.1, 0.3)), hair_volume=float(0 if bald else u(0.07, 0.2)),
        eye_x=float(u(0.37, 0.44)), eye_y=float(u(0.07, 0.13)), eye_w=float(u(0.12, 0.15)),
        eye_h=float(u(0.045, 0.062)), iris_color=_jitter(rng, _IRIS[rng.integers(len(_IRIS))], 0.04),
        iris_size=float(u(0.75, 0.9)), brow_color=tuple(float(c) for c in np.asarray(hair) * u(0.35, 0.7)),
        brow_thickness=float(u(0.025, 0.045)), brow_angle=float(u(-0.15, 0.15)), brow_arch=float(u(0, 0.04)),
        brow_height=float(u(0.1, 0.14)), mouth_y=float(u(-0.47, -0.4)), mouth_w=float(u(0.2, 0.27)),
        lip_color=_jitter(rng, lips, 0.03), lip_upper=float(u(0.02, 0.035)), lip_lower=float(u(0.025, 0.045)),
        teeth_gap=bool(u() < 0.3), gold_tooth=int(rng.integers(-3, 3)) if u() < 0.3 else -99, marks=tuple(marks),
        glasses=_jitter(rng, rng.choice([0.05, 0.4, 0.7]) * np.ones(3), 0.08) if u() < 0.3 else None,
        earrings=_jitter(rng, [0.9, 0.75, 0.3] if u() < 0.5 else [0.8, 0.8, 0.85], 0.03) if u() < 0.35 else None,
        clothes=tuple(float(c) for c in rng.uniform(0.05, 0.9, 3)),
        background=(_jitter(rng, base_bg, 0.1), _jitter(rng, base_bg, 0.1) if u() < 0.6 else tuple(base_bg)))


def _identity_features(identity: Identity) -> np.ndarray:
    """Fixed-length float vector of every parameter (optional parts padded, with a presence flag)."""
    values = []
    for field in dataclasses.fields(identity):
        value = getattr(identity, field.name)
        if field.name == "marks":
            padded = list(value) + [(0.0, 0.0, 0.0, -1.0)] * (MAX_MARKS - len(value))
            value = [v for mark in padded for v in (*mark[:3], *np.eye(4)[int(mark[3]) + 1])]
        elif field.name in ("glasses", "earrings"):
            value = [0.0, 0.0, 0.0, 0.0] if value is None else [1.0, *value]
        values.extend(np.ravel(np.asarray(value, np.float64)))
    return np.asarray(values)


@functools.cache
def _feature_statistics() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, spread and a random projection, all from constant seeds, so identity vectors never change."""
    rng = np.random.default_rng(20240611)
    sample = np.stack([_identity_features(sample_identity(rng)) for _ in range(512)])
    projection = np.random.default_rng(7).normal(size=(sample.shape[1], 512))
    return sample.mean(0), sample.std(0) + 1e-3, projection


def identity_vector(identity: Identity, dim: int = 64) -> np.ndarray:
    """`[dim]` float32 unit vector embedding the identity's parameters (standardised, randomly projected)."""
    mean, std, projection = _feature_statistics()
    if not 0 < dim <= projection.shape[1]:
        raise ValueError(f"dim must be in [1, {projection.shape[1]}], got {dim}")
    vector = ((_identity_features(identity) - mean) / std) @ projection[:, :dim]
    return (vector / np.linalg.norm(vector)).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------- motion


def _smooth_noise(rng, num_frames, low_hz, high_hz, terms=3) -> np.ndarray:
    """Unit-RMS sum of sinusoids with random frequencies in [low_hz, high_hz] and random phases, `[T]`."""
    t = np.arange(num_frames)[:, None] / FPS
    freq, phase, amp = rng.uniform(low_hz, high_hz, terms), rng.uniform(0, 2 * np.pi, terms), rng.uniform(0.5, 1, terms)
    return (amp * np.sin(2 * np.pi * freq * t + phase)).sum(1) / np.sqrt((amp ** 2).sum() / 2)


def sample_motion(rng: np.random.Generator, num_frames: int) -> Motion:
    """Smooth talking-like trajectories (25 fps): head sway, syllabic jaw at 3-5 Hz, 3-4 frame blinks, smiles."""
    T, noise, u = num_frames, functools.partial(_smooth_noise, rng, num_frames), rng.uniform

    def angle(offset_deg, amp_deg, low_hz, high_hz):  # tanh keeps every angle strictly inside ±30°
        raw = np.radians(rng.normal(0, offset_deg) + u(*amp_deg) * noise(low_hz, high_hz))
        return MAX_ANGLE * np.tanh(raw / MAX_ANGLE)

    phase = np.cumsum(2 * np.pi * u(3, 5) * (1 + 0.2 * noise(0.3, 1.0)) / FPS) + u(0, 2 * np.pi)
    syllables = (0.5 - 0.5 * np.cos(phase)) ** 1.5 * _clamp(0.75 + 0.3 * noise(1.0, 2.5), 0, 1)
    talking = _clamp(0.6 + 0.7 * noise(0.1, 0.5), 0, 1)  # pauses where the envelope clips to 0
    frames = np.arange(T)
    smile = np.full(T, u(0, 0.25))
    for _ in range(rng.poisson(T / 90 + 0.3)):
        smile += u(0.4, 1) * np.exp(-((frames - u(0, T)) / u(8, 30)) ** 2)
    blink = np.zeros(T)
    start = u(-60, 60)
    while start < T:
        profile = [0.5, 1.0, 1.0, 0.45] if u() < 0.5 else [0.6, 1.0, 0.5]
        for k, value in enumerate(profile):
            if 0 <= int(start) + k < T:
                blink[int(start) + k] = max(blink[int(start) + k], value)
        start += u(40, 120)
    f32 = functools.partial(np.asarray, dtype=np.float32)
    return Motion(
        yaw=f32(angle(12, (5, 18), 0.05, 0.4)), pitch=f32(angle(6, (3, 10), 0.05, 0.5)),
        roll=f32(angle(4, (2, 7), 0.05, 0.4)), jaw=f32(_clamp(talking * syllables, 0, 1)),
        smile=f32(_clamp(smile, 0, 1)), blink=f32(blink),
        gaze_x=f32(_clamp(0.45 * noise(0.1, 0.6) + u(-0.3, 0.3), -1, 1)),
        gaze_y=f32(_clamp(0.3 * noise(0.1, 0.6) + u(-0.2, 0.2), -1, 1)),
        tx=f32(0.03 * noise(0.05, 0.3)), ty=f32(0.02 * noise(0.05, 0.3)))


# ----------------------------------------------------------------------------------------------------------- geometry

@dataclasses.dataclass(frozen=True)
class _Frames:
    """Pose and expression of F frames; scalars are [F, 1] to broadcast over rays."""
    rot: np.ndarray          # [F, 3, 3] head -> world
    tx: np.ndarray
    ty: np.ndarray
    jaw: np.ndarray
    smile: np.ndarray
    blink: np.ndarray
    gaze_x: np.ndarray
    gaze_y: np.ndarray

    @classmethod
    def take(cls, motion: Motion, index: np.ndarray) -> "_Frames":
        col = {f.name: np.asarray(getattr(motion, f.name), np.float32)[index][:, None]
               for f in dataclasses.fields(motion)}
        (cy, sy), (cp, sp), (cr, sr) = [(np.cos(v[:, 0]), np.sin(v[:, 0])) for v in (col["yaw"], col["pitch"],
                                                                                       col["roll"])]
        one, zero = np.ones_like(cy), np.zeros_like(cy)
        yaw = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(-1, 3, 3)
        pitch = np.stack([one, zero, zero, zero, cp, sp, zero, -sp, cp], -1).reshape(-1, 3, 3)  # lifts the nose
        roll = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(-1, 3, 3)
        return cls(roll @ pitch @ yaw, col["tx"], col["ty"], col["jaw"], col["smile"], col["blink"], col["gaze_x"],
                   col["gaze_y"])


def _radius(idt: Identity, x, y, z, jaw):
    """Coarse radial surface ρ(ω) (what rays hit): skull, hair volume, tapered jaw, nose, ears, chin and open jaw."""
    front = _clamp(5 * z - 3.5, 0, 1)
    hair = _clamp((y - 0.6 * z + 0.15) / 0.9, 0, 1)
    lower = _clamp((0.2 - y) / 0.7, 0, 1)  # smoothstep, so the taper leaves no crease
    r = 1 + idt.hair_volume * hair * hair * (3 - 2 * hair) - idt.jaw_taper * x * x * lower * lower * (3 - 2 * lower)
    tip, top = math.sin(idt.nose_tip), math.sin(idt.eye_y + 0.03)
    along = _clamp((top - y) / (top - tip), 0, 1)
    ridge = np.where(y > tip, along * np.sqrt(along), np.exp(-((y - tip) / 0.045) ** 2))
    r += 0.2 * idt.nose_size * front * ridge * np.exp(-(x / (idt.nose_width * (0.045 + 0.05 * along))) ** 2)
    r += idt.ear_size * np.exp(-(((np.abs(x) - 0.98) / 0.1) ** 2 + ((y + 0.02) / 0.2) ** 2 + ((z + 0.08) / 0.12) ** 2))
    return r + (idt.chin + 0.1 * jaw) * _clamp(3 * z, 0, 1) * np.exp(-((x / 0.3) ** 2 + ((y + 0.8) / 0.22) ** 2))


def _radius_detail(idt: Identity, x, y, z):
    """Small bumps that only shade (brow ridge, eye sockets, cheeks, lips, nose wings); rays ignore them."""
    front, face = _clamp(5 * z - 3.5, 0, 1), _clamp(4 * z - 1, 0, 1)
    side = np.abs(x)
    d = idt.brow_ridge * np.exp(-((y - math.sin(idt.eye_y + 0.13)) / 0.06) ** 2 - (x / 0.45) ** 2)
    d = d - 0.035 * np.exp(-(((side - math.sin(idt.eye_x)) / 0.1) ** 2 + ((y - math.sin(idt.eye_y)) / 0.065) ** 2))
    d = d + idt.cheek * np.exp(-(((side - 0.45) / 0.16) ** 2 + ((y + 0.15) / 0.15) ** 2))
    d = d + 0.025 * np.exp(-((x / 0.2) ** 2 + ((y - math.sin(idt.mouth_y)) / 0.07) ** 2))
    wings = np.exp(-((x / (0.085 * idt.nose_width)) ** 2 + ((y - math.sin(idt.nose_tip) - 0.01) / 0.04) ** 2))
    return d * face + 0.05 * idt.nose_size * front * wings


def _radius_bounds(idt: Identity) -> tuple[float, float]:
    """Shells that contain the coarse surface for any jaw opening, from a dense sample of directions plus a margin."""
    a, e = np.meshgrid(np.linspace(-np.pi, np.pi, 181), np.linspace(-1.57, 1.57, 91))
    radii = [_radius(idt, *_direction(a, e), jaw) for jaw in (0.0, 1.0)]
    return float(min(r.min() for r in radii)) - 0.02, float(max(r.max() for r in radii)) + 0.03


def _direction(a, e):
    ce = np.cos(e)
    return ce * np.sin(a), np.sin(e), ce * np.cos(a)


def _surface_point(idt: Identity, a, e, jaw):
    """Head-frame point of surface coordinates (a, e)."""
    x, y, z = _direction(a, e)
    r = _radius(idt, x, y, z, jaw)
    return idt.axes[0] * r * x, idt.axes[1] * r * y, idt.axes[2] * r * z


def _to_world(fr: _Frames, p):
    """Head-frame point -> world (x, y) and ray depth t (distance in front of the camera plane)."""
    p = [c - o for c, o in zip(p, PIVOT)]
    x, y, z = (sum(fr.rot[:, i, j, None] * p[j] for j in range(3)) + PIVOT[i] for i in range(3))
    return x + fr.tx, y + fr.ty + HEAD_Y, CAMERA_Z - z


def _to_image(xw, yw):
    """World (x, y) -> normalised image (x, y), y down."""
    return (xw / FRAME_HALF + 1) / 2, (1 - yw / FRAME_HALF) / 2


def _rays(fr: _Frames, xw, yw):
    """Head-frame origins [F, P] and per-frame directions [F, 1] of the rays through world (x, y)."""
    ox, oy, oz = xw - fr.tx - PIVOT[0], yw - fr.ty - HEAD_Y - PIVOT[1], CAMERA_Z - PIVOT[2]
    origin = tuple(fr.rot[:, 0, i, None] * ox + fr.rot[:, 1, i, None] * oy + fr.rot[:, 2, i, None] * oz + PIVOT[i]
                   for i in range(3))
    return origin, tuple(-fr.rot[:, 2, i, None] for i in range(3))


def _cast_head(idt: Identity, fr: _Frames, origin, direction, size, bounds):
    """First hits of the coarse surface: march MARCH_SAMPLES points between two shells, refine by regula falsi.

    Returns the unit direction ω of the hit (of the closest approach for misses), depth t, hit mask and the coverage
    of missing rays that graze the silhouette (for anti-aliasing). All [F, P].
    """
    o = [c / s for c, s in zip(origin, idt.axes)]
    d = [c / s for c, s in zip(direction, idt.axes)]
    dd = sum(c * c for c in d)
    od = sum(a * b for a, b in zip(o, d))
    t_close = -od / dd
    miss2 = sum(c * c for c in o) - od * od / dd       # squared distance of the ray from the centre
    r_min, r_max = bounds

    def enter(radius):
        return t_close - np.sqrt(np.maximum(radius * radius - miss2, 0) / dd)

    def gap(t):  # > 0 outside the surface
        q = [oc + t * dc for oc, dc in zip(o, d)]
        norm = np.sqrt(sum(c * c for c in q))
        return norm - _radius(idt, *(c / norm for c in q), fr.jaw)

    start = enter(r_max)
    stop = np.where(miss2 < r_min * r_min, enter(r_min), t_close)  # inside for sure, or the closest approach
    ts = start + (stop - start) * np.linspace(0, 1, MARCH_SAMPLES, dtype=np.float32)[:, None, None]
    gs = gap(ts)
    inside = gs <= 0
    hit = inside.any(0)
    first = np.maximum(inside.argmax(0), 1)[None]
    t_lo, t_hi = np.take_along_axis(ts, first - 1, 0)[0], np.take_along_axis(ts, first, 0)[0]
    g_lo, g_hi = np.take_along_axis(gs, first - 1, 0)[0], np.take_along_axis(gs, first, 0)[0]
    for _ in range(FALSI_STEPS):
        tm = t_lo + (t_hi - t_lo) * _clamp(g_lo / np.maximum(g_lo - g_hi, 1e-9), 0.1, 0.9)
        gm = gap(tm)
        out = gm > 0
        t_lo, g_lo = np.where(out, tm, t_lo), np.where(out, gm, g_lo)
        t_hi, g_hi = np.where(out, t_hi, tm), np.where(out, g_hi, gm)
    t = np.where(hit, t_lo + (t_hi - t_lo) * _clamp(g_lo / np.maximum(g_lo - g_hi, 1e-9), 0, 1), t_close)
    q = [oc + t * dc for oc, dc in zip(o, d)]
    norm = np.sqrt(sum(c * c for c in q))
    omega = tuple(c / norm for c in q)
    world_gap = gs[-1] * np.sqrt(sum((s * c) ** 2 for s, c in zip(idt.axes, omega)))
    coverage = np.where(hit, 1.0, _clamp(0.5 - world_gap * size / (2 * FRAME_HALF), 0, 1))
    return omega, t, hit, coverage


def _cast_body(xb, yb, size):
    """Neck (vertical elliptic cylinder) and shoulders (ellipsoid), static in the body frame, seen along -z.

    Returns, for each: front depth t, coverage (anti-aliased) and outward normal.
    """
    (rx, rz), pixel = NECK_RADII, 2 * FRAME_HALF / size
    neck_z = NECK_Z + rz * np.sqrt(np.maximum(1 - (xb / rx) ** 2, 0))
    neck_cover = _clamp(0.5 + (rx - np.abs(xb)) / pixel, 0, 1) * (yb < NECK_TOP)
    (cx, cy, cz), (sx, sy, sz) = SHOULDER_CENTRE, SHOULDER_RADII
    inside = 1 - (xb / sx) ** 2 - ((yb - cy) / sy) ** 2
    shoulder_z = cz + sz * np.sqrt(np.maximum(inside, 0))
    shoulder_cover = _clamp(0.5 + inside * min(sx, sy) / (2 * pixel), 0, 1)
    return ((CAMERA_Z - neck_z, neck_cover, (xb / rx ** 2, 0 * xb, (neck_z - NECK_Z) / rz ** 2)),
            (CAMERA_Z - shoulder_z, shoulder_cover, (xb / sx ** 2, (yb - cy) / sy ** 2, (shoulder_z - cz) / sz ** 2)))


def _lambert(normal, fr: _Frames | None = None):
    """Fixed-light Lambert factor of world normals, or of head-frame normals of frames `fr`."""
    world = normal if fr is None else [sum(fr.rot[:, i, j, None] * normal[j] for j in range(3)) for i in range(3)]
    cosine = sum(w * l for w, l in zip(world, LIGHT)) / np.sqrt(sum(w * w for w in world))
    return AMBIENT + DIFFUSE * np.maximum(cosine, 0)


def _head_shading(idt: Identity, fr: _Frames, omega):
    """Lambert factor from the detailed surface's normal, by finite differences along azimuth and elevation."""
    x, y, z = omega
    inv = 1 / np.sqrt(x * x + z * z + 1e-12)
    t1 = (z * inv, 0.0, -x * inv)
    t2 = (y * t1[2], z * t1[0] - x * t1[2], -y * t1[0])

    def point(h1, h2):
        w = [c + h1 * a + h2 * b for c, a, b in zip(omega, t1, t2)]
        norm = np.sqrt(sum(c * c for c in w))
        w = [c / norm for c in w]
        r = _radius(idt, *w, fr.jaw) + _radius_detail(idt, *w)
        return [s * r * c for s, c in zip(idt.axes, w)]

    p0, p1, p2 = point(0, 0), point(0.01, 0), point(0, 0.01)
    u = [a - b for a, b in zip(p1, p0)]
    v = [a - b for a, b in zip(p2, p0)]
    return _lambert((u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]), fr)


# ---------------------------------------------------------------------------------------------- features and warps

def _lids(idt: Identity, a):
    """Rest eye opening of column a (both eyes): lower and upper lid elevations."""
    c = _clamp(1 - ((np.abs(a) - idt.eye_x) / idt.eye_w) ** 2, 0, 1) ** 0.75
    return idt.eye_y - 0.8 * idt.eye_h * c, idt.eye_y + idt.eye_h * c


def _brow(idt: Identity, a):
    """Brow centre elevation, half thickness and position along it (-1 inner end, 1 outer end) at azimuth a."""
    along = (np.abs(a) - idt.eye_x - 0.01) / (1.25 * idt.eye_w)
    centre = idt.eye_y + idt.brow_height + idt.brow_arch * (1 - along * along) + 0.3 * idt.brow_angle * along
    return centre, idt.brow_thickness * (0.5 - 0.15 * (along + 1) / 2), along


def _lip_heights(idt: Identity, a):
    """Upper and lower lip heights at material azimuth a (0 beyond the corners), with a cupid's bow."""
    t = _clamp(1 - (a / idt.mouth_w) ** 2, 0, 1)
    return idt.lip_upper * np.sqrt(t) * (1 - 0.3 * np.exp(-(a / 0.035) ** 2)), idt.lip_lower * t ** 0.6


def _hairline(idt: Identity, a):
    temple = idt.hair_front + idt.hair_temple
    return np.interp(np.abs(a), [0, 0.45, 1.1, 1.45, 1.75, 2.1, 2.6, np.pi],
                     [idt.hair_front, temple, temple - 0.05, idt.hair_side, idt.hair_side - 0.1, -0.2, -0.45, -0.5]
                     ).astype(np.float32)


def _knots(idt: Identity, a, fr: _Frames):
    """Piecewise-linear map material elevation -> surface elevation for each column a: `(material, surface)`, each
    [9, ...]. Segment 2 (lip line) and segment 5 (eye opening) are holes in the skin; the jaw drops everything between
    the lip line and the chin, a smile lifts the mouth corners, a blink slides the upper lid down to the lower one."""
    width = idt.mouth_w * (1 + SMILE_WIDEN * fr.smile)
    opening = JAW_DROP * fr.jaw * np.sqrt(_clamp(1 - (a / width) ** 2, 0, 1))
    lift = SMILE_LIFT * fr.smile * (a / width) ** 2 * np.exp(-(a / (1.6 * width)) ** 4)
    chin = idt.mouth_y - 0.5
    lower, upper = _lids(idt, a)
    below_brow = idt.eye_y + idt.brow_height - 0.03
    pole = np.pi / 2
    material = [-pole, chin, idt.mouth_y, idt.mouth_y, idt.mouth_y + 0.15, lower, upper, below_brow, pole]
    surface = [-pole, chin - 0.85 * JAW_DROP * fr.jaw * _clamp(1 - (a / 1.15) ** 2, 0, 1),
               idt.mouth_y - opening + lift, idt.mouth_y + 0.2 * opening + lift, idt.mouth_y + 0.15, lower,
               upper - 0.97 * fr.blink * (upper - lower), below_brow, pole]
    shape = np.broadcast_shapes(*(np.shape(k) for k in surface))
    return tuple(np.stack([np.broadcast_to(np.float32(k), shape) for k in knots]) for knots in (material, surface))


def _piecewise(x, xs, ys):
    """Piecewise-linear interpolation with per-element knots xs, ys [K, ...] (flat gathers: cheaper than
    take_along_axis)."""
    x = np.broadcast_to(x, xs.shape[1:])
    count = x.size
    segment = (x.reshape(1, -1) >= xs[1:-1].reshape(len(xs) - 2, -1)).sum(0)
    flat = segment * count + np.arange(count)
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    x0, x1, y0, y1 = xs[flat], xs[flat + count], ys[flat], ys[flat + count]
    value = y0 + (y1 - y0) * _clamp((x.reshape(-1) - x0) / np.maximum(x1 - x0, 1e-6), 0, 1)
    return value.reshape(x.shape)


def _widen(idt: Identity, a, e_material, smile, inverse=False):
    """Smile widening of the mouth region along azimuth (material -> surface, or back)."""
    rest = idt.mouth_w
    wide = rest * (1 + SMILE_WIDEN * smile * _clamp(1 - ((e_material - idt.mouth_y) / 0.25) ** 2, 0, 1))
    src, dst = (wide, rest) if inverse else (rest, wide)
    side = np.abs(a)
    out = np.where(side < src, side * dst / src, np.where(side < 1, dst + (side - src) * (1 - dst) / (1 - src), side))
    return np.sign(a) * out


def _to_material(idt: Identity, a, e, fr: _Frames):
    """Surface -> material coordinates, and the column's surface knots (where the openings are)."""
    material, surface = _knots(idt, a, fr)
    e_m = _piecewise(e, surface, material)
    return _widen(idt, a, e_m, fr.smile, inverse=True), e_m, surface


def _to_surface(idt: Identity, a_m, e_m, fr: _Frames):
    a = _widen(idt, a_m, e_m, fr.smile)
    material, surface = _knots(idt, a, fr)
    return a, _piecewise(e_m, material, surface)


def _gaze_offset(idt: Identity, fr: _Frames):
    return 0.5 * idt.eye_w * fr.gaze_x, 0.45 * idt.eye_h * fr.gaze_y


def _landmark_material(idt: Identity):
    """Material (a, e) of every layout landmark on this identity [N] each, and which are iris points (their (a, e)
    are eyeball coordinates at zero gaze)."""
    lay = synthetic_layout()
    a, e = np.zeros(lay.num_points), np.zeros(lay.num_points)
    for i, (feature, side, u, v) in enumerate(zip(lay.feature, lay.side, lay.u, lay.v)):
        eye_a = side * idt.eye_x + u * idt.eye_w
        if feature == "grid":
            a[i], e[i] = u, v
        elif feature == "jaw":
            a[i], e[i] = 1.25 * u, idt.mouth_y - 0.42 + 0.3 * u * u
        elif feature == "hairline":
            a[i] = 0.9 * u
            e[i] = _hairline(idt, a[i])
        elif feature.startswith("brow"):
            a[i] = side * (idt.eye_x + 0.01) + 1.25 * idt.eye_w * u
            centre, half, _ = _brow(idt, a[i])
            e[i] = centre + (half if feature == "brow_upper" else -half)
        elif feature in ("eye_corner", "lid_upper", "lid_lower"):  # just inside the skin at the lid edges
            lower, upper = _lids(idt, eye_a)
            a[i], e[i] = eye_a, {"eye_corner": idt.eye_y, "lid_upper": upper + 1e-4, "lid_lower": lower - 1e-4}[feature]
        elif feature == "iris":
            radius = idt.iris_size * idt.eye_h
            a[i], e[i] = side * idt.eye_x + u * radius, idt.eye_y + v * radius
        elif feature == "nose_ridge":
            a[i], e[i] = 0.0, idt.eye_y + (u + 1) / 2 * (idt.nose_tip - idt.eye_y)
        elif feature == "nose_base":
            a[i], e[i] = 0.09 * idt.nose_width * u, idt.nose_tip - 0.06 + 0.03 * u * u
        else:  # lips: outer contours at the lip heights, inner ones just either side of the lip line
            a[i] = u * idt.mouth_w
            upper, lower = _lip_heights(idt, a[i])
            e[i] = idt.mouth_y + {"lip_outer_upper": upper, "lip_outer_lower": -lower, "lip_inner_upper": 1e-4,
                                  "lip_inner_lower": -1e-4}[feature]
    return a.astype(np.float32), e.astype(np.float32), np.asarray([f == "iris" for f in lay.feature])


# ------------------------------------------------------------------------------------------------------------ texture

def _soft(distance, width):
    """Anti-aliased inside mask from a signed distance (> 0 inside)."""
    return _clamp(0.5 + distance / width, 0, 1)


def _mix(color, rgb, mask):
    return color + (np.asarray(rgb, np.float32) - color) * mask[..., None]


def _skin_albedo(idt: Identity, a, e, aa):
    """`[..., 3]` skin, blush, side marks, nostrils, lips, lids, brows, hair, earrings at material (a, e)."""
    skin = np.asarray(idt.skin, np.float32)
    blotch = sum(amp * np.sin(fa * a + fe * e + phase) for fa, fe, phase, amp in zip(*[iter(idt.skin_blotch)] * 4))
    color = skin * (1 + blotch)[..., None]
    color = _mix(color, skin * [1, 0.62, 0.6], idt.blush * np.exp(-(((np.abs(a) - 0.45) / 0.15) ** 2
                                                                    + ((e + 0.15) / 0.12) ** 2)))
    for mark_a, mark_e, size, kind in idt.marks:
        da, de = (a - mark_a) * math.cos(mark_e), e - mark_e
        if kind == 1:  # scar: a thin pale line
            along, across = 0.8 * da + 0.6 * de, 0.8 * de - 0.6 * da
            color = _mix(color, skin * [1.15, 0.92, 0.9], _soft(np.minimum(3 * size - np.abs(along),
                                                                            0.008 - np.abs(across)), aa))
        else:  # mole, or a larger reddish patch
            radius = size if kind == 0 else 2 * size * (1 + 0.2 * np.sin(5 * np.arctan2(de, da)))
            color = _mix(color, (0.22, 0.13, 0.08) if kind == 0 else skin * [0.78, 0.5, 0.48],
                         _soft(radius - np.sqrt(da * da + de * de), aa))
    nostril = np.hypot((np.abs(a) - 0.032 * idt.nose_width) / (0.022 * idt.nose_width),
                       (e - idt.nose_tip + 0.04) / 0.011)
    color = _mix(color, skin * 0.3, _soft((1 - nostril) * 0.012, aa))
    up, low = _lip_heights(idt, a)
    rel = e - idt.mouth_y
    color = _mix(color, np.asarray(idt.lip_color) * 0.88,
                 _soft(np.minimum(rel, up - rel), aa) * _clamp(2 * up / aa, 0, 1))
    color = _mix(color, idt.lip_color, _soft(np.minimum(-rel, low + rel), aa) * _clamp(2 * low / aa, 0, 1))
    color = _mix(color, np.asarray(idt.lip_color) * 0.35, _soft(0.25 * aa - np.abs(rel), aa)
                 * _soft(1.05 * idt.mouth_w - np.abs(a), aa))
    lower, upper = _lids(idt, a)
    opening = _clamp((upper - lower) / 0.02, 0, 1)
    above, below = e - upper, lower - e
    color = _mix(color, skin * 0.78, 0.35 * opening * np.exp(-(above / 0.045) ** 2))
    color = _mix(color, skin * 0.6, opening * _soft(0.005 - np.abs(above - 0.04), aa))
    color = _mix(color, skin * 0.7, opening * _soft(np.minimum(below, 0.008 - below), aa))
    color = _mix(color, (0.07, 0.05, 0.04), opening * _soft(np.minimum(above, 0.015 - above), aa))
    centre, half, along = _brow(idt, a)
    color = _mix(color, idt.brow_color, 0.92 * _soft(np.minimum(half - np.abs(e - centre),
                                                               (1 - np.abs(along)) * 1.25 * idt.eye_w), aa))
    strands = 1 + 0.1 * np.sin(40 * a + 4 * np.sin(7 * e + 3 * a)) * max(0.0, min(1.0, 1.5 - 40 * aa))
    hair = np.asarray(idt.hair_color, np.float32) * strands[..., None]
    color = color + (hair - color) * _soft(e - _hairline(idt, a), 1.5 * aa + 0.02)[..., None]
    if idt.earrings is not None:
        color = _mix(color, idt.earrings, _soft(0.03 - np.hypot(np.abs(a) - 1.62, e + 0.17), aa))
    return color


def _glasses(idt: Identity, a, e, aa):
    """Glasses frame and lens masks at surface (a, e): rigid with the skull, not with the skin."""
    if idt.glasses is None:
        return None, None
    rx, ry = 1.5 * idt.eye_w, 2.3 * idt.eye_h + 0.02
    da, de = np.abs(a) - idt.eye_x, e - idt.eye_y - 0.005
    ring = np.hypot(da / rx, de / ry)
    rim = _soft(0.012 - np.abs(ring - 1) * min(rx, ry), aa)
    bridge = _soft(np.minimum(0.01 - np.abs(de - 0.03), idt.eye_x - rx + 0.01 - np.abs(a)), aa)
    arms = _soft(np.minimum(0.01 - np.abs(de - 0.03), np.minimum(np.abs(a) - idt.eye_x - rx + 0.01,
                                                                 1.55 - np.abs(a))), aa)
    return np.maximum(rim, np.maximum(bridge, arms)), _soft(1 - ring, 0.05)


def _eyeball_albedo(idt: Identity, a, e, gaze_a, gaze_e, upper_lid, aa):
    """`[..., 3]` sclera, iris, pupil and highlight, moved by gaze and shadowed by the upper lid."""
    from_centre = a - np.sign(a) * idt.eye_x
    da, de = from_centre - gaze_a, e - idt.eye_y - gaze_e
    r, radius = np.hypot(da, de), idt.iris_size * idt.eye_h
    corner = 1 - 0.3 * _clamp(np.abs(from_centre) / idt.eye_w, 0, 1) ** 2
    color = np.asarray([0.94, 0.91, 0.87], np.float32) * corner[..., None]
    iris = np.asarray(idt.iris_color, np.float32) * (1.25 - 0.7 * _clamp(r / radius, 0, 1) ** 3)[..., None]
    color = color + (iris - color) * _soft(radius - r, aa)[..., None]
    color = _mix(color, (0.03, 0.03, 0.03), _soft(0.42 * radius - r, aa))
    color = _mix(color, (1, 1, 1), _soft(0.16 * radius - np.hypot(da + 0.35 * radius, de - 0.35 * radius), aa))
    return color * (1 - 0.5 * np.exp(-np.maximum(upper_lid - e, 0) / 0.015))[..., None]


def _mouth_albedo(idt: Identity, a, below_upper, above_lower, aa):
    """`[..., 3]` mouth interior: dark cavity, tongue, upper and lower teeth (gap, gold tooth)."""
    color = np.broadcast_to(np.asarray([0.25, 0.06, 0.07], np.float32), (*a.shape, 3))
    color = _mix(color, (0.62, 0.26, 0.28), _soft(np.minimum(0.05 - above_lower, 0.6 * idt.mouth_w - np.abs(a)), aa))
    column = a / 0.045
    seam = _soft(0.005 - np.abs(column - np.round(column)) * 0.045, 0.5 * aa)
    shade = (1 - 0.5 * (a / idt.mouth_w) ** 2) * (1 - 0.6 * seam)
    upper = _soft(np.minimum(np.minimum(below_upper, 0.045 - below_upper), 0.72 * idt.mouth_w - np.abs(a)), aa)
    if idt.teeth_gap:
        upper = upper * _soft(np.abs(a) - 0.012, 0.5 * aa)
    gold = (np.floor(column) == idt.gold_tooth)[..., None]
    tooth = np.where(gold, np.float32([0.85, 0.66, 0.2]), np.float32([0.95, 0.93, 0.84])) * shade[..., None]
    color = color + (tooth - color) * upper[..., None]
    lower = _soft(np.minimum(np.minimum(above_lower, 0.03 - above_lower), 0.6 * idt.mouth_w - np.abs(a)), aa)
    return _mix(color, (0.9, 0.88, 0.8), lower * shade)


# ---------------------------------------------------------------------------------------------------------- rendering

def _render_frames(idt: Identity, motion: Motion, index: np.ndarray, size: int, landmarks, bounds
                   ) -> dict[str, np.ndarray]:
    """Frames `index` [F] at once: every pixel ray, then one ray per landmark (for its visibility)."""
    fr, prev = _Frames.take(motion, index), _Frames.take(motion, np.maximum(index - 1, 0))
    lm_a, lm_e, lm_iris = landmarks
    gaze_a, gaze_e = _gaze_offset(idt, fr)
    skin_a, skin_e = _to_surface(idt, lm_a, lm_e, fr)
    lm_a, lm_e = np.where(lm_iris, lm_a + gaze_a, skin_a), np.where(lm_iris, lm_e + gaze_e, skin_e)
    lm_x, lm_y, lm_t = _to_world(fr, _surface_point(idt, lm_a, lm_e, fr.jaw))

    pixels, count = size * size, len(index)
    centres = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1) * FRAME_HALF
    xw = np.concatenate([np.broadcast_to(np.tile(centres, size), (count, pixels)), lm_x], 1)
    yw = np.concatenate([np.broadcast_to(np.repeat(-centres, size), (count, pixels)), lm_y], 1)
    origin, direction = _rays(fr, xw, yw)
    omega, t, hit, coverage = _cast_head(idt, fr, origin, direction, size, bounds)
    neck, shoulders = _cast_body(xw - fr.tx, yw - fr.ty - HEAD_Y, size)
    neck_front = neck[0] < shoulders[0]
    body_t = np.minimum(*(np.where(cover >= 0.5, depth, np.inf) for depth, cover, _ in (neck, shoulders)))
    head = hit & (t < body_t)
    a, e = np.arctan2(omega[0], omega[2]), np.arcsin(_clamp(omega[1], -1, 1))
    a_m, e_m, knots = _to_material(idt, a, e, fr)
    aa = 2 * FRAME_HALF / size / 0.85  # one pixel, in radians of surface angle

    def hole_cover(lower, upper):  # anti-aliased coverage of a skin opening (0 where it is shut)
        return _soft(np.minimum(e - lower, upper - e), aa) * _clamp((upper - lower) / aa, 0, 1) * head

    eye_cover, mouth_cover = hole_cover(knots[5], knots[6]), hole_cover(knots[2], knots[3])
    eye, mouth = eye_cover >= 0.5, mouth_cover >= 0.5

    visible = head[:, pixels:] & (np.abs(t[:, pixels:] - lm_t) < 0.05) & (~lm_iris | eye[:, pixels:])
    lm = np.stack(_to_image(lm_x, lm_y), -1)

    # Pixels only from here on.
    cut = (slice(None), slice(None, pixels))
    a, e, a_m, e_m, mouth, eye, eye_cover, mouth_cover, head, hit, coverage, neck_front = (
        v[cut] for v in (a, e, a_m, e_m, mouth, eye, eye_cover, mouth_cover, head, hit, coverage, neck_front))
    omega, knots = [v[cut] for v in omega], knots[(slice(None), *cut)]
    neck, shoulders = ([v[cut] for v in neck[:2]] + [[n[cut] for n in neck[2]]],
                       [v[cut] for v in shoulders[:2]] + [[n[cut] for n in shoulders[2]]])
    albedo = _skin_albedo(idt, a_m, e_m, aa)
    near = eye_cover > 0  # the openings are blended over the skin along their anti-aliased edges
    gaze = [np.broadcast_to(g, a.shape)[near] for g in (gaze_a, gaze_e)]
    albedo[near] = _mix(albedo[near], _eyeball_albedo(idt, a[near], e[near], *gaze, knots[6][near], aa),
                        eye_cover[near])
    below_upper, above_lower = knots[3] - e, e - knots[2]
    near = mouth_cover > 0
    albedo[near] = _mix(albedo[near], _mouth_albedo(idt, a[near], below_upper[near], above_lower[near], aa),
                        mouth_cover[near])
    frame, lens = _glasses(idt, a, e, aa)
    if frame is not None:
        albedo = _mix(_mix(albedo, (0.55, 0.65, 0.75), 0.12 * lens), idt.glasses, frame)
    head_color = albedo * _head_shading(idt, fr, omega)[..., None]

    # Back to front: background, neck and shoulders in depth order, then the head.
    rows = np.repeat(np.linspace(0, 1, size, dtype=np.float32), size)[:, None]
    top, bottom = (np.asarray(c, np.float32) for c in idt.background)
    color = np.broadcast_to(top + (bottom - top) * rows, head_color.shape)
    chin_shadow = 1 - 0.5 * np.exp(-np.maximum(-0.72 - (yw[cut] - fr.ty - HEAD_Y), 0) / 0.12)
    neck_color = np.float32(idt.skin) * 0.95 * (_lambert(neck[2]) * chin_shadow)[..., None]
    shirt_color = np.float32(idt.clothes) * _lambert(shoulders[2])[..., None]
    for shirt_behind in (True, False):
        color = np.where((neck_front == shirt_behind)[..., None], _mix(color, shirt_color, shoulders[1]),
                         _mix(color, neck_color, neck[1]))
    color = _mix(color, head_color, np.where(head, 1, np.where(hit, 0, coverage)))

    # Backward flow: where each pixel's surface point was one frame earlier; the body only translates.
    on_skull = False if frame is None else frame > 0.5  # glasses frames do not slide with the skin
    prev_a, prev_e = _to_surface(idt, a_m, e_m, prev)
    prev_gaze = _gaze_offset(idt, prev)
    prev_a = np.where(eye, a - gaze_a + prev_gaze[0], np.where(mouth | on_skull, a, prev_a))
    prev_e = np.where(eye, e - gaze_e + prev_gaze[1], np.where(on_skull, e, prev_e))
    if mouth.any():  # the interior follows the nearer lip edge
        prev_knots = _knots(idt, a[mouth], _Frames(None, *(np.broadcast_to(v, a.shape)[mouth] for v in (
            prev.tx, prev.ty, prev.jaw, prev.smile, prev.blink, prev.gaze_x, prev.gaze_y))))[1]
        upper = below_upper[mouth] < above_lower[mouth]
        prev_e[mouth] = np.where(upper, prev_knots[3] - below_upper[mouth], prev_knots[2] + above_lower[mouth])
    prev_x, prev_y, _ = _to_world(prev, _surface_point(idt, prev_a, prev_e, prev.jaw))
    body = (neck[1] >= 0.5) | (shoulders[1] >= 0.5)
    prev_x = np.where(head, prev_x, xw[cut] + prev.tx - fr.tx)
    prev_y = np.where(head, prev_y, yw[cut] + prev.ty - fr.ty)
    flow = np.stack([(prev_x - xw[cut]) * size / (2 * FRAME_HALF), (yw[cut] - prev_y) * size / (2 * FRAME_HALF)], -1)
    flow = np.where(((head | body) & (index > 0)[:, None])[..., None], flow, 0)
    return {"image": np.round(_clamp(color, 0, 1) * 255).astype(np.uint8).reshape(count, size, size, 3),
            "landmarks": lm.astype(np.float32), "visibility": visible,
            "flow": flow.astype(np.float32).reshape(count, size, size, 2)}


def render_clip(identity: Identity, motion: Motion, size: int) -> dict[str, np.ndarray]:
    """Render a clip: `image` uint8 [T, size, size, 3]; `landmarks` float32 [T, N, 2] (x, y) in [0, 1];
    `visibility` bool [T, N]; `flow` float32 [T, size, size, 2] backward flow in pixels (frame 0 and background 0).

    Frames are rendered in small batches on two threads (numpy releases the GIL); each frame depends only on its own
    and its predecessor's motion, so the output is bit-identical however it is split.
    """
    landmarks, bounds = _landmark_material(identity), _radius_bounds(identity)
    per_batch = max(1, 12000 // (size * size + len(landmarks[0])))
    batches = [np.arange(lo, min(lo + per_batch, motion.num_frames)) for lo in range(0, motion.num_frames, per_batch)]
    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(lambda index: _render_frames(identity, motion, index, size, landmarks, bounds), batches))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def preview_grid(identities: int, frames: int, size: int, seed: int) -> np.ndarray:
    """`[identities·size, frames·size, 3]` uint8: one sampled clip per row (every 8th frame), its visible landmarks
    drawn as one-pixel dots (red on facial features, faint white on the surface grid)."""
    rng = np.random.default_rng(seed)
    facial = np.asarray([f != "grid" for f in synthetic_layout().feature])  # grid points drawn fainter
    rows = []
    for _ in range(identities):
        identity = sample_identity(rng)
        clip = render_clip(identity, sample_motion(rng, 8 * frames), size)
        tiles = []
        for t in range(0, 8 * frames, 8):
            tile = clip["image"][t].copy()
            pixel = np.clip((clip["landmarks"][t] * size).astype(int), 0, size - 1)
            for points, color, alpha in ((~facial, (255, 255, 255), 0.5), (facial, (255, 30, 30), 1.0)):
                x, y = pixel[points & clip["visibility"][t]].T
                tile[y, x] = np.round((1 - alpha) * tile[y, x] + alpha * np.asarray(color)).astype(np.uint8)
            tiles.append(tile)
        rows.append(np.concatenate(tiles, 1))
    return np.concatenate(rows, 0)
