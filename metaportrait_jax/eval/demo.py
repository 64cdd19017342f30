"""The demo's outputs: the side-by-side animation and the metrics page."""

import os

import numpy as np
from PIL import Image

from metaportrait_jax.data.sources import FrameSource
from metaportrait_jax.eval.animate import animate_frames
from metaportrait_jax.media.video import write_mp4


def animation(forward, frames: FrameSource, persons: list[int], one_shot: dict, personalised: dict[int, dict],
              batch_size: int) -> np.ndarray:
    """uint8 `[T, persons·H, 4·W, 3]`: per person (a row) source | driving | one-shot | personalised, the source
    being the first clip's source frame and the driving frames the second clip's (T = the shortest second clip)."""
    clips, rows = frames.clips, []
    for person in persons:
        first, second = clips.clips_of(person)[:2]
        drivers = np.arange(clips.start[second], clips.start[second] + clips.length[second])
        general = animate_frames(forward, one_shot, frames, int(clips.source[first]), drivers, batch_size)
        own = animate_frames(forward, personalised[person], frames, int(clips.source[first]), drivers, batch_size)
        source = np.broadcast_to(frames[int(clips.source[first])]["image"], general["driving"].shape)
        rows.append(np.concatenate([source, general["driving"], general["prediction"], own["prediction"]], axis=2))
    length = min(len(r) for r in rows)
    return np.concatenate([r[:length] for r in rows], axis=1)


def write_animation(video: np.ndarray, output_dir: str, fps: float) -> tuple[str, str]:
    """`animation.mp4` and `animation.png` (six frames side by side, enlarged ×2)."""
    mp4, png = os.path.join(output_dir, "animation.mp4"), os.path.join(output_dir, "animation.png")
    write_mp4(mp4, video, fps=fps)
    step = max(1, len(video) // 6)
    strip = np.concatenate(list(video[::step][:6]), axis=1)
    Image.fromarray(strip).resize((2 * strip.shape[1], 2 * strip.shape[0]), Image.NEAREST).save(png)
    return mp4, png


def write_metrics(path: str, results: dict, source_copy: dict[str, float], adaptation_table: str,
                  seconds: dict[str, float], settings: str) -> None:
    """`metrics.md`: one-shot vs personalised quality per start beside the source-copy baseline (the source frame as
    the answer), the adaptation table and the wall time per stage; `settings` says where the models came from."""
    lines = ["# Demo metrics", "",
             f"Held-out persons of the synthetic benchmark: personalised on their first clip, judged on their second "
             f"clip (driven from the first clip's source frame). {settings}", "",
             "| model | PSNR dB ↑ | SSIM ↑ | LPIPS ↓ |", "|---|---:|---:|---:|",
             f"| source copy (no motion) | {source_copy['psnr']:.2f} | {source_copy['ssim']:.3f} | "
             f"{source_copy['lpips']:.3f} |"]
    for name, result in results.items():
        for label, row in ((f"{name}, one-shot", result["mean"][0]),
                           (f"{name}, personalised {result['mean'][-1]['step']} steps", result["mean"][-1])):
            lines.append(f"| {label} | {row['psnr']:.2f} | {row['ssim']:.3f} | {row['lpips']:.3f} |")
    lines += ["", "## Personalisation curves", "", adaptation_table.strip(), "", "## Wall time", "",
              "| stage | seconds |", "|---|---:|"]
    lines += [f"| {stage} | {value:.0f} |" for stage, value in seconds.items()]
    lines.append(f"| total | {sum(seconds.values()):.0f} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
