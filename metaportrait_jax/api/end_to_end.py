"""The end-to-end demo on the embedded synthetic data (tiny model, 64²). By default it starts from the models shipped
in `pretrained/` (a pretrained base, a meta-trained start and an equal-compute control, see pretrained/README.md);
`from_scratch=True` builds its own: pretrain the warp then the full stage, meta-train (Reptile) from it. Then it
personalises every start on held-out persons: each one's first clip to learn from, its second clip (driven from the
first clip's source frame) to judge on."""

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence

import matplotlib
import ml_collections

from metaportrait_jax.api.training import train
from metaportrait_jax.config import REPO_CONFIGS, REPO_PRETRAINED, ConfigError, apply_overrides, load_config
from metaportrait_jax.data.datasets import build_synthetic
from metaportrait_jax.data.sources import TfdsFrames
from metaportrait_jax.eval import demo as outputs
from metaportrait_jax.eval.adaptation import EVAL_STEPS, AdaptationCurves, write_report
from metaportrait_jax.train.checkpoint import load_sn_free_generator, read_checkpoint_config

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the headless backend is chosen)

# start name -> its folder in pretrained/
SHIPPED_STARTS = {"pretrained": "base", "control": "control", "meta-trained": "meta"}


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """The demo's budget. The training steps apply to `from_scratch` only; the defaults from the shipped models take
    a few minutes on 2 CPU cores, from scratch about 15."""

    warp_steps: int = 150
    full_steps: int = 150
    meta_steps: int = 20
    meta_tasks: int = 2          # tasks per meta-batch
    personalize_steps: int = 30
    persons: int = 2             # held-out persons to personalise and animate
    batch_size: int = 2          # pairs per training batch, per support/query set and per personalisation step
    seed: int = 365


ROLLED_INNER_LOOP_BELOW = 10  # meta-steps: where a rolled loop's saved compile time is spent on slower steps


@dataclasses.dataclass(frozen=True)
class DemoResult:
    output: str
    complete: bool                 # False if a signal stopped a training stage: call again to resume
    seconds: dict[str, float]      # wall time per stage
    adaptation: dict               # per start: personalisation curves (adaptation.json's "results")


def _recipe(name: str, output: str, settings: DemoSettings, steps: int, overrides: Sequence[str],
            fields: dict) -> ml_collections.ConfigDict:
    """configs/<name>:tiny with the demo's settings and `fields` ({"a.b": value}), then the user's overrides."""
    config = load_config(os.path.join(REPO_CONFIGS, f"{name}.py:tiny"))
    config.update_from_flattened_dict({"data.data_dir": os.path.join(output, "data"), "train.image_every": 50,
                                       "train.checkpoint_every": 100, "train.steps": steps,
                                       "train.decay_steps": (steps,), "seed": settings.seed, **fields})
    apply_overrides(config, overrides, source=f"demo {name}")
    return config


def _train_starts(out: str, settings: DemoSettings, overrides: Sequence[str], seconds: dict[str, float],
                  log: Callable[[str], None]) -> tuple[dict[str, str], dict[str, str]] | None:
    """Pretrains (warp, full) and meta-trains into `out`: ({start name: export}, {stage: metrics.jsonl}), or None
    when a signal stopped a stage."""
    # 5x the official learning rates: a few hundred CPU steps then show something
    pretrain = {"train.learning_rate": 1e-3, "train.batch_size": settings.batch_size}
    stages = (
        (2, "warp", f"pretrain warp stage, {settings.warp_steps} steps",
         lambda: _recipe("pretrain_warp", out, settings, settings.warp_steps, overrides, pretrain)),
        (3, "full", f"pretrain full stage, {settings.full_steps} steps",
         lambda: _recipe("pretrain_full", out, settings, settings.full_steps, overrides,
                         {**pretrain, "init_from": exports["warp"]})),
        (4, "meta", f"meta-train (Reptile), {settings.meta_steps} steps from the full-stage model",
         lambda: _recipe("meta_train", out, settings, settings.meta_steps, overrides,
                         {"init_from": exports["full"], "train.learning_rate": 1e-4,
                          "meta.inner_learning_rate": 1e-3, "meta.tasks": settings.meta_tasks,
                          "meta.support": settings.batch_size, "meta.query": settings.batch_size,
                          # a short run is mostly compiling: roll the inner loop (README, Tests)
                          "meta.unroll_inner_loop": settings.meta_steps >= ROLLED_INNER_LOOP_BELOW})),
    )
    exports: dict[str, str] = {}
    for number, name, what, make_config in stages:
        config = make_config()
        log(f"{number}/5 {what} -> {out}/{name} (tensorboard --logdir {out})")
        result = train(config, os.path.join(out, name))
        seconds["meta-train" if name == "meta" else f"pretrain {name}"] = result.seconds
        if result.export is None:
            log(f"stopped early; rerun to resume from {out}")
            return None
        exports[name] = result.export
    return ({"pretrained": exports["full"], "meta-trained": exports["meta"]},
            {f"{stage} stage": os.path.join(out, stage, "metrics.jsonl") for stage in ("warp", "full", "meta")})


def demo(output: str = "results/demo", settings: DemoSettings = DemoSettings(), overrides: Sequence[str] = (),
         log: Callable[[str], None] = print, from_scratch: bool = False) -> DemoResult:
    """Runs (or resumes) the demo into `output`: animation.mp4 (rows: persons; columns: source | driving |
    one-shot | personalised), adaptation.png, metrics.md and losses.png; from scratch also the training runs.
    `overrides` (`a.b=value`) apply to every training config (from scratch only)."""
    out = os.path.abspath(output)
    os.makedirs(out, exist_ok=True)
    seconds: dict[str, float] = {}
    tic = time.perf_counter()
    if from_scratch:
        log(f"1/5 data: synthetic_talking_heads r64 -> {out}/data")
        data_dir = build_synthetic(os.path.join(out, "data"), "r64")
        seconds["data"] = time.perf_counter() - tic
        trained = _train_starts(out, settings, overrides, seconds, log)
        if trained is None:
            return DemoResult(out, False, seconds, {})
        starts, logs = trained
        step, what = "5/5", f"the pretrained and the meta-trained model ({settings.warp_steps} warp, " \
            f"{settings.full_steps} full-stage and {settings.meta_steps} meta-steps here)"
    else:
        if overrides:
            raise ConfigError("demo: --config overrides apply to the training stages of --from-scratch only")
        starts = {name: os.path.join(REPO_PRETRAINED, folder) for name, folder in SHIPPED_STARTS.items()}
        synthetic = read_checkpoint_config(starts["pretrained"]).data.synthetic
        log(f"1/2 data: synthetic_talking_heads {synthetic} (the shipped models' data) -> {out}/data")
        data_dir = build_synthetic(os.path.join(out, "data"), synthetic)
        seconds["data"] = time.perf_counter() - tic
        logs = {**{f"pretrained: {stage} stage": os.path.join(starts["pretrained"], f"{stage}_metrics.jsonl")
                   for stage in ("warp", "full")},
                **{name: os.path.join(starts[name], "metrics.jsonl") for name in ("control", "meta-trained")}}
        step, what = "2/2", f"the models shipped in {REPO_PRETRAINED} (pretrained/README.md)"

    tic = time.perf_counter()
    eval_steps = [s for s in EVAL_STEPS if s <= settings.personalize_steps] + [settings.personalize_steps]
    log(f"{step} personalise on {settings.persons} held-out persons ({settings.personalize_steps} steps each) from "
        f"{what}")
    frames = TfdsFrames(data_dir, "test")
    loaded = {name: load_sn_free_generator(path) for name, path in starts.items()}
    generators = {name: variables for name, (_, variables) in loaded.items()}
    start_config = loaded["pretrained"][0]  # the SN-free model config that all the starts share
    curves = AdaptationCurves(start_config.model, frames, eval_steps, batch_size=settings.batch_size,
                              learning_rate=1e-3, seed=settings.seed, frames_per_eval=16)
    persons = curves.persons()[:settings.persons]
    results, personalised = curves.run(generators, persons)
    paths = write_report(results, "pretrained", out)
    video = outputs.animation(curves.forward, frames, persons, generators["pretrained"],
                              personalised["meta-trained"], settings.batch_size)
    seconds["personalise + evaluate"] = time.perf_counter() - tic
    outputs.write_animation(video, out, fps=start_config.inference.fps)
    with open(paths["md"]) as f:
        adaptation_table = f.read()
    origin = (f"trained here: warp {settings.warp_steps}, full {settings.full_steps}, meta {settings.meta_steps} "
              f"steps" if from_scratch else f"shipped in {REPO_PRETRAINED}")
    outputs.write_metrics(os.path.join(out, "metrics.md"), results, curves.source_copy(persons), adaptation_table,
                          seconds, f"Models {origin}; personalisation {settings.personalize_steps} steps, batch "
                          f"{settings.batch_size}, seed {settings.seed}.")
    plot_losses(logs, os.path.join(out, "losses.png"))
    with open(os.path.join(out, "metrics.md")) as f:
        log(f.read())
    runs = " and the runs warp/, full/, meta/ (checkpoints, TensorBoard, metrics.jsonl)" if from_scratch else ""
    log(f"demo outputs in {out}: animation.mp4 (rows: persons; columns: source | driving | one-shot | personalised), "
        f"adaptation.png, metrics.md; also animation.png, adaptation.json, losses.png{runs}")
    return DemoResult(out, True, seconds, results)


def plot_losses(logs: dict[str, str], path: str) -> None:
    """One panel per training run: every loss in its metrics.jsonl against the step (log scale)."""
    fig, axes = plt.subplots(1, len(logs), figsize=(6 * len(logs), 4), squeeze=False)
    for ax, (name, log) in zip(axes[0], logs.items()):
        with open(log) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for key in ("warp_perceptual", "perceptual", "eye", "mouth", "feature_matching", "generator_gan",
                    "discriminator_loss", "support_loss_before", "support_loss_after_inner"):
            if key in rows[0]:
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
        ax.set(title=name, xlabel="step", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
