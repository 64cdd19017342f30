"""`metaportrait-jax`: one console script, one function per subcommand.

Config fields are overridden with `--config.a.b=value` after any subcommand that takes `--config`. User mistakes
(bad files, bad configs) end with a one-line `metaportrait-jax: error: ...` and exit status 2, without a traceback.
"""

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _load_config(spec: str, overrides: Sequence[str]):
    from metaportrait_jax.config import load_config

    return load_config(spec, overrides)


def cmd_summary(args, overrides):
    from metaportrait_jax.models.summary import format_summary, model_summary

    config = _load_config(args.config, overrides)
    print(format_summary(model_summary(config.model), f"{args.config}: image {config.model.image_size}²"))


def cmd_convert(args, overrides):
    if args.what == "official-sr":
        from metaportrait_jax.convert.official_sr import convert_official_sr

        config = _load_config(args.config or os.path.join(REPO_CONFIGS, "temporal_sr.py"), overrides)
        if convert_official_sr(args.checkpoint, args.output, config, args.key):
            print("no temporal windows in the checkpoint (GFPGAN v1.3): they start afresh, as in official training")
    else:
        from metaportrait_jax.convert.official_base import convert_official_base

        config = _load_config(args.config or os.path.join(REPO_CONFIGS, "official_256.py"), overrides)
        convert_official_base(args.checkpoint, args.output, config)
    print(f"wrote {args.output}")


def cmd_enhance(args, overrides):
    from metaportrait_jax.eval.enhance import enhance_folder

    if overrides:
        raise _UsageError("enhance takes its config from the checkpoint; --config.* overrides do not apply")
    video = enhance_folder(args.checkpoint, args.input, args.output, args.chunk)
    print(f"wrote frames and {video}")


def cmd_animate(args, overrides):
    from metaportrait_jax.eval.animate import animate_official

    if overrides:
        raise _UsageError("animate takes its config from the checkpoint; --config.* overrides do not apply")
    raw = args.source or args.driving
    if bool(args.official_data) == bool(raw):
        raise _UsageError("animate needs either --source PHOTO --driving VIDEO or --official-data DATA")
    if raw:
        animate_raw(args)
        return
    raw_only = [flag for flag, value in (("--side-by-side", args.side_by_side), ("--max-frames", args.max_frames),
                                         ("--motion", args.motion)) if value]
    if raw_only:
        raise _UsageError(f"{', '.join(raw_only)} apply to --source/--driving animation, not --official-data")
    if args.sr:  # fail on a bad SR checkpoint before the base model runs
        from metaportrait_jax.eval.enhance import sr_checkpoint_config

        sr_checkpoint_config(args.sr)
    video = animate_official(args.checkpoint, args.official_data, args.output, args.batch_size)
    print(f"wrote frames and {video}")
    if args.sr:
        from metaportrait_jax.eval.enhance import enhance_written_frames

        print(f"wrote frames and {enhance_written_frames(args.sr, args.output)}")


def animate_raw(args) -> None:
    """`animate --source PHOTO --driving VIDEO --output OUT.mp4`: any portrait, any driving video."""
    from metaportrait_jax.eval.animate import animate_portrait

    if not (args.source and args.driving):
        raise _UsageError("animate needs both --source PHOTO and --driving VIDEO")
    upsample = None
    if args.sr:
        from metaportrait_jax.eval.enhance import sr_stream

        upsample = sr_stream(args.sr)
    report = animate_portrait(args.checkpoint, args.source, args.driving, args.output, batch_size=args.batch_size,
                              motion=args.motion or "relative", side_by_side=args.side_by_side,
                              max_frames=args.max_frames, upsample=upsample)
    if report.driving_frames_without_face:
        shown = ", ".join(map(str, report.driving_frames_without_face[:10]))
        more = ", ..." if len(report.driving_frames_without_face) > 10 else ""
        print(f"warning: {len(report.driving_frames_without_face)} driving frames had no face landmarks ({shown}"
              f"{more}); they reuse the nearest earlier frame's", file=sys.stderr)
    print(f"wrote {report.output} ({report.frames} frames at {report.fps:g} fps)")


def cmd_evaluate(args, overrides):
    from metaportrait_jax.eval.evaluate import evaluate, markdown_report

    if overrides:
        raise _UsageError("evaluate takes its config from the checkpoint; --config.* overrides do not apply")
    if args.fid_variant and not args.fid_weights:
        raise _UsageError("--fid-variant needs --fid-weights")
    report = evaluate(args.checkpoint, args.data, args.output, split=args.split, max_persons=args.max_persons,
                      max_frames=args.max_frames, batch_size=args.batch_size, face_metrics=not args.no_face_metrics,
                      fid_weights=args.fid_weights, fid_variant=args.fid_variant, progress=not args.no_progress)
    print(markdown_report(report))
    print(f"wrote {os.path.join(args.output, 'metrics.json')}, metrics.md and sample grids")


def cmd_preprocess(args, overrides):
    from metaportrait_jax.data.preprocess import format_report, preprocess

    if overrides:
        raise _UsageError("preprocess takes no --config.* overrides")
    report = preprocess(args.input, args.output, args.size)
    print(format_report(report))
    if args.tfds:
        from metaportrait_jax.data.datasets import build_from_official_layout
        from metaportrait_jax.data.preprocess import TOPOLOGY

        if report.clips_done + report.clips_already_done == 0:
            raise _UsageError(f"{args.output}: no clip was preprocessed, so there is nothing to put in a TFDS data set")
        directory = build_from_official_layout(args.output, args.tfds, TOPOLOGY, args.size, 128)
        print(f"talking_head_videos data set: {directory}")


def cmd_demo(args, overrides):
    """End to end on the embedded synthetic data (tiny model, 64²): build the data, pretrain the warp then the full
    stage, meta-train (Reptile) from it, and personalise both starts on held-out persons: each one's first clip to
    learn from, its second clip (driven from the first clip's source frame) to judge on."""
    import time

    import numpy as np

    from metaportrait_jax.data.datasets import build_synthetic
    from metaportrait_jax.data.sources import TfdsFrames
    from metaportrait_jax.eval import demo
    from metaportrait_jax.eval.adaptation import EVAL_STEPS, AdaptationCurves, write_report
    from metaportrait_jax.train.checkpoint import load_sn_free_generator

    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    seconds: dict[str, float] = {}
    # 5x the official learning rates: a few hundred CPU steps then show something (override to change them)
    common = [f"data.data_dir={os.path.join(out, 'data')}", "train.image_every=50", "train.checkpoint_every=100",
              f"seed={args.seed}"]
    pretrain = [*common, "train.learning_rate=1e-3", f"train.batch_size={args.batch_size}"]

    tic = time.perf_counter()
    print(f"1/5 data: synthetic_talking_heads r64 -> {out}/data")
    data_dir = build_synthetic(os.path.join(out, "data"), "r64")
    seconds["data"] = time.perf_counter() - tic
    exports = {}
    for number, stage, steps in ((2, "warp", args.warp_steps), (3, "full", args.full_steps)):
        tic = time.perf_counter()
        config = _load_config(os.path.join(REPO_CONFIGS, f"pretrain_{stage}.py:tiny"),
                              [*pretrain, f"train.steps={steps}", f"train.decay_steps=({steps},)",
                               *([f"init_from={exports['warp']!r}"] if stage == "full" else []), *overrides])
        print(f"{number}/5 pretrain {stage} stage, {steps} steps -> {out}/{stage} (tensorboard --logdir {out})")
        exports[stage] = train_from_config(config, os.path.join(out, stage))
        seconds[f"pretrain {stage}"] = time.perf_counter() - tic
        if exports[stage] is None:
            print(f"stopped early; rerun to resume from {out}")
            return
    tic = time.perf_counter()
    meta = _load_config(os.path.join(REPO_CONFIGS, "meta_train.py:tiny"),
                        [*common, f"init_from={exports['full']!r}", f"train.steps={args.meta_steps}",
                         f"train.decay_steps=({args.meta_steps},)", "train.learning_rate=1e-4",
                         "meta.inner_learning_rate=1e-3", f"meta.tasks={args.meta_tasks}",
                         f"meta.support={args.batch_size}", f"meta.query={args.batch_size}", *overrides])
    print(f"4/5 meta-train (Reptile), {args.meta_steps} steps from the full-stage model -> {out}/meta")
    exports["meta"] = train_from_config(meta, os.path.join(out, "meta"))
    seconds["meta-train"] = time.perf_counter() - tic
    if exports["meta"] is None:
        print(f"stopped early; rerun to resume from {out}")
        return

    tic = time.perf_counter()
    eval_steps = [s for s in EVAL_STEPS if s <= args.personalize_steps] + [args.personalize_steps]
    print(f"5/5 personalise on {args.persons} held-out persons ({args.personalize_steps} steps each, from the "
          f"pretrained and from the meta-trained model)")
    frames = TfdsFrames(data_dir, "test")
    model = meta.model
    curves = AdaptationCurves(model, frames, eval_steps, batch_size=args.batch_size, learning_rate=1e-3,
                              seed=args.seed, frames_per_eval=16)
    starts = {"pretrained": load_sn_free_generator(exports["full"])[1],
              "meta-trained": load_sn_free_generator(exports["meta"])[1]}
    persons = curves.persons()[:args.persons]
    results, personalised = curves.run(starts, persons)
    paths = write_report(results, "pretrained", out)
    video = demo.animation(curves.forward, frames, persons, starts["pretrained"], personalised["meta-trained"],
                           args.batch_size)
    seconds["personalise + evaluate"] = time.perf_counter() - tic
    demo.write_animation(video, out, fps=meta.inference.fps)
    with open(paths["md"]) as f:
        adaptation_table = f.read()
    demo.write_metrics(os.path.join(out, "metrics.md"), results, adaptation_table, seconds, args)
    plot_losses({stage: os.path.join(out, stage, "metrics.jsonl") for stage in ("warp", "full")},
                os.path.join(out, "losses.png"))
    with open(os.path.join(out, "metrics.md")) as f:
        print(f.read())
    print(f"demo outputs in {out}: animation.mp4 (rows: persons; columns: source | driving | one-shot | "
          f"personalised), adaptation.png, metrics.md; also animation.png, adaptation.json, losses.png and the "
          f"runs warp/, full/, meta/ (checkpoints, TensorBoard, metrics.jsonl)")


def plot_losses(logs: dict[str, str], path: str) -> None:
    """One panel per training run: every loss in its metrics.jsonl against the step (log scale)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(logs), figsize=(6 * len(logs), 4), squeeze=False)
    for ax, (name, log) in zip(axes[0], logs.items()):
        with open(log) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for key in ("warp_perceptual", "perceptual", "eye", "mouth", "feature_matching", "generator_gan",
                    "discriminator_loss"):
            if key in rows[0]:
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
        ax.set(title=f"{name} stage", xlabel="step", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cmd_data(args, overrides):
    from metaportrait_jax.data import datasets

    if overrides:
        raise _UsageError("data takes no --config.* overrides")
    if args.what == "synthetic":
        directory = datasets.build_synthetic(args.data_dir, args.config)
    else:
        if not args.root:
            raise _UsageError("data layout needs --root FOLDER (an official-layout folder)")
        directory = datasets.build_from_official_layout(args.root, args.data_dir, args.topology, args.image_size,
                                                        args.id_dim, args.test_persons)
    print(f"data set ready: {directory}")


def open_frames(data, model):
    """The frame source a config's `data` section names (building the synthetic set on first use)."""
    from metaportrait_jax.data import datasets, sources
    from metaportrait_jax.ops.topology import get_topology

    if data.source == "synthetic":
        frames = sources.TfdsFrames(datasets.build_synthetic(data.data_dir, data.synthetic), data.split)
    elif data.source == "tfds":
        frames = sources.TfdsFrames(data.path, data.split)
    elif data.source == "layout":
        frames = sources.OfficialLayoutFrames(data.path, get_topology(model.topology), model.image_size, model.id_dim)
    else:
        raise _UsageError(f"config.data.source must be synthetic, tfds or layout, got {data.source!r}")
    if model is None:  # the caller checks what it needs
        return frames
    problems = sources.fit_problems(frames, model)
    if problems:
        raise _UsageError(f"the data does not fit the model: {', '.join(problems)}; set --config.model.* to match")
    return frames


def train_from_config(config, workdir: str, progress: bool = True, frames=None, start_generator=None,
                      export: str | None = None) -> str | None:
    """Runs (or resumes) the training `config` describes; returns the exported model checkpoint once complete.

    A config with a `meta` section meta-trains (episodes, `MetaTrainer`, starting from `init_from` with spectral
    norm folded); otherwise it pretrains (pairs, `Trainer`). `frames` replaces the config's data source and
    `start_generator` the initial generator variables (personalisation passes both); `export` defaults to
    `<workdir>/export`.
    """
    import jax
    from jax.experimental import multihost_utils

    if config.get("task") == "temporal_sr":
        return train_sr_from_config(config, workdir, progress)

    from metaportrait_jax.convert.vgg import perceptual_features
    from metaportrait_jax.data.pipeline import PipelineSpec, make_dataset, make_iterator
    from metaportrait_jax.train.checkpoint import CONFIG_FILE, check_same_model, load_sn_free_generator, save_model
    from metaportrait_jax.train.loop import run
    from metaportrait_jax.train.meta_step import MetaTrainer, check_meta_config
    from metaportrait_jax.train.step import Trainer, check_train_config

    meta = config.get("meta")
    check_train_config(config.train)  # before the data are opened (and perhaps built)
    if meta:
        check_meta_config(config)
    frames = frames if frames is not None else open_frames(config.data, config.model)
    try:
        if meta:
            spec = PipelineSpec("episodes", meta.tasks, seed=config.seed, support=meta.support, query=meta.query,
                                episode_sampling=meta.episode_sampling, workers=config.data.workers)
        else:
            spec = PipelineSpec("pairs", config.train.batch_size, seed=config.seed, source=config.data.pair_source,
                                workers=config.data.workers)
        dataset = make_dataset(frames, spec, jax.process_index(), jax.process_count())
    except ValueError as e:  # a config value the pipeline cannot use
        raise _UsageError(f"config: {e}") from None
    network, params = perceptual_features(config.train.perceptual)
    encoder, encoder_variables = (load_identity_encoder(config.train.identity_encoder)
                                  if config.train.loss.identity > 0 else (None, None))
    if meta:
        trainer = MetaTrainer(config, network, encoder)
        if config.init_from and start_generator is None:
            stored_config, start_generator = load_sn_free_generator(config.init_from)
            check_same_model(stored_config.model, config.model, config.init_from)
    else:
        trainer = Trainer(config, network, encoder)
    state, done = run(config, workdir, lambda s: make_iterator(dataset, spec, s), trainer,
                      ({"params": params}, encoder_variables, start_generator), progress=progress)
    if not done:
        return None
    export = export or os.path.join(workdir, "export")
    # config.json is written last, after the collective save every process takes part in: no process can see it
    # before all have decided to save
    if not os.path.exists(os.path.join(export, CONFIG_FILE)):
        discriminator = None if meta or start_generator is not None else state.discriminator
        save_model(export, config, state.generator, discriminator)
    if jax.process_count() > 1:  # no process may go on (e.g. to a stage that reads the export) before it is complete
        multihost_utils.sync_global_devices("export written")
    return export


def train_sr_from_config(config, workdir: str, progress: bool = True) -> str | None:
    """Temporal SR training; exports `export/` (the weights, which the official inference uses) and `export_ema/`."""
    import jax

    from metaportrait_jax.convert.vgg import perceptual_features
    from metaportrait_jax.data.pipeline import make_iterator
    from metaportrait_jax.data.sr_clips import sr_dataset
    from metaportrait_jax.train.checkpoint import save_model
    from metaportrait_jax.train.loop import run
    from metaportrait_jax.train.sr_step import SRTrainer

    if config.data.source not in ("synthetic", "tfds"):
        raise _UsageError("temporal SR trains on a TFDS frame set with high-resolution frames (data.source "
                          f"synthetic or tfds), got {config.data.source!r}")
    frames = open_frames(config.data, None)
    try:
        dataset, spec = sr_dataset(config, frames, jax.process_index(), jax.process_count())
    except ValueError as e:
        raise _UsageError(f"config: {e}") from None
    network, params = perceptual_features(config.train.perceptual, taps="pre_relu")
    state, _ = run(config, workdir, lambda s: make_iterator(dataset, spec, s), SRTrainer(config, network),
                   ({"params": params},), progress=progress)
    if int(state.step) < config.train.steps:
        return None
    export = os.path.join(workdir, "export")
    for directory, params in ((export, state.params), (export + "_ema", state.ema)):
        if jax.process_index() == 0 and not os.path.exists(directory):
            save_model(directory, config, {"params": jax.device_get(params)})
    return export


def load_identity_encoder(spec: str):
    """`package.module:factory` -> factory() = (flax module, variables): the pluggable identity-loss encoder."""
    import importlib

    module_name, _, factory = spec.partition(":")
    if not module_name or not factory:
        raise _UsageError(f"train.identity_encoder must look like package.module:factory, got {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), factory)()
    except (ImportError, AttributeError) as e:
        raise _UsageError(f"train.identity_encoder {spec!r}: {e}") from None


def join_processes(args) -> None:
    """Joins the multi-process job that `add_process_flags`' flags or the environment describe (a no-op for one
    process); call it first in every subcommand that can run on several processes."""
    from metaportrait_jax.train.distributed import initialize_processes

    try:
        initialize_processes(args.coordinator, args.num_processes, args.process_id)
    except ValueError as e:  # a bad flag or variable
        raise _UsageError(str(e)) from None


def cmd_train(args, overrides):
    join_processes(args)
    config = _load_config(args.config, overrides)
    is_meta = "meta" in config
    if is_meta != (args.command == "meta-train"):
        right = "meta-train" if is_meta else "train"
        raise _UsageError(f"{args.config}: this config is for `metaportrait-jax {right}`")
    export = train_from_config(config, args.workdir, progress=not args.no_progress)
    if export:
        print(f"trained {config.train.steps} steps; model checkpoint: {export}")
    else:
        print(f"stopped early; rerun the same command to resume from {args.workdir}")


def open_person_frames(path: str, split: str, person: int | None, clip_ordinals: Sequence[int] | None, model):
    """One person's clips of a data set: a TFDS directory built by `data` / `preprocess --tfds`, or an
    official-layout folder (`preprocess` output; one person per identity key)."""
    from metaportrait_jax.data import sources
    from metaportrait_jax.ops.topology import get_topology

    if os.path.isfile(os.path.join(path, sources.METADATA_FILE)):
        frames = sources.TfdsFrames(path, split)
    elif os.path.isdir(path):
        frames = sources.OfficialLayoutFrames(path, get_topology(model.topology), model.image_size, model.id_dim)
    else:
        raise _UsageError(f"{path}: no such data folder")
    persons = [int(p) for p in frames.clips.persons()]
    if person is None:
        if len(persons) != 1:
            raise _UsageError(f"{path}: holds {len(persons)} persons; choose one with --person (one of "
                              f"{', '.join(map(str, persons[:20]))}{' ...' if len(persons) > 20 else ''})")
        person = persons[0]
    if person not in persons:
        raise _UsageError(f"{path}: no person {person} (it has {', '.join(map(str, persons[:20]))})")
    own = frames.clips.clips_of(person)
    ordinals = list(range(len(own))) if clip_ordinals is None else list(clip_ordinals)
    if not ordinals or any(not 0 <= o < len(own) for o in ordinals):
        raise _UsageError(f"{path}: person {person} has clips 0..{len(own) - 1}, asked for {ordinals}")
    return sources.ClipSubset(frames, own[ordinals])


def cmd_personalize(args, overrides):
    """Fine-tune a (meta-)trained model on one person; resumable; writes a model checkpoint `animate` accepts."""
    import json

    from metaportrait_jax.train.checkpoint import load_sn_free_generator
    from metaportrait_jax.train.config import personalization_config

    if overrides:
        raise _UsageError("personalize takes no --config.* overrides; its settings are flags")
    if (args.steps is None) == (args.seconds is None):
        raise _UsageError("personalize needs exactly one of --steps N or --seconds S")
    stored, generator = load_sn_free_generator(args.checkpoint)
    frames = open_person_frames(args.data, args.split, args.person, args.clips, stored.model)
    config = personalization_config(stored.model, args.steps or 10 ** 9, args.seconds or 0.0, args.batch_size,
                                    args.learning_rate, seed=args.seed)
    output = os.path.abspath(args.output)
    export = train_from_config(config, os.path.join(output, "run"), progress=not args.no_progress, frames=frames,
                               start_generator=generator, export=output)
    if not export:
        print(f"stopped early; rerun the same command to resume from {output}")
        return
    with open(os.path.join(output, "run", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if rows:
        print(f"personalised {rows[-1]['step']} steps in {rows[-1]['elapsed_seconds']:.1f} s: loss "
              f"{rows[0]['generator_loss']:.4f} -> {rows[-1]['generator_loss']:.4f} (per step: "
              f"{output}/run/metrics.jsonl)")
    print(f"personalised model checkpoint: {output}")


def cmd_benchmark(args, overrides):
    """`benchmark adaptation`: meta-train each algorithm from one pretrained model at an equal wall-time budget,
    then personalisation curves of every start on held-out persons (JSON, Markdown table, PNG)."""
    import json

    from metaportrait_jax.eval.adaptation import AdaptationCurves, write_report
    from metaportrait_jax.train.checkpoint import CONFIG_FILE, load_sn_free_generator

    workdir = os.path.abspath(args.workdir)
    _, pretrained = load_sn_free_generator(args.pretrained)
    starts, costs = {"pretrained": pretrained}, {}
    for algorithm in args.algorithms:
        config = _load_config(args.config, [f"meta.algorithm={algorithm!r}", f"init_from={args.pretrained!r}",
                                            f"train.steps={args.meta_steps}",
                                            f"train.max_seconds={float(args.seconds_per_algorithm)}",
                                            *(["train.adam_eps_root=1e-16"] if algorithm == "maml" else []),
                                            *overrides])
        export = os.path.join(workdir, algorithm, "export")
        if os.path.exists(os.path.join(export, CONFIG_FILE)):  # finished by an earlier run of this command
            print(f"meta-trained {algorithm}: {export}")
        else:
            print(f"meta-training {algorithm} for {args.seconds_per_algorithm} s (at most {args.meta_steps} steps)")
            export = train_from_config(config, os.path.join(workdir, algorithm), progress=not args.no_progress)
        if export is None:
            print(f"stopped early; rerun the same command to resume from {workdir}")
            return
        with open(os.path.join(workdir, algorithm, "metrics.jsonl")) as f:
            last = [json.loads(line) for line in f if line.strip()][-1]
        costs[algorithm] = {"meta_steps": last["step"], "seconds": last["elapsed_seconds"]}
        starts[algorithm] = load_sn_free_generator(export)[1]
    config = _load_config(args.config, [*overrides, "data.split='test'"])
    frames = open_frames(config.data, config.model)  # the held-out persons
    curves = AdaptationCurves(config.model, frames, batch_size=args.batch_size, seed=config.seed)
    persons = curves.persons()[:args.persons]
    results, _ = curves.run(starts, persons)
    paths = write_report(results, "pretrained", workdir)
    with open(paths["json"]) as f:
        report = json.load(f)
    report["meta_training"] = costs
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1)
    with open(paths["md"]) as f:
        print(f.read())
    print(f"adaptation benchmark: {paths['json']}, {paths['md']}, {paths['png']}")


class _UsageError(ValueError):
    pass


def _user_errors() -> tuple[type[BaseException], ...]:
    from metaportrait_jax.config import ConfigError
    from metaportrait_jax.convert.torch_reader import TorchFileError

    errors = [ConfigError, TorchFileError, _UsageError, FileNotFoundError, NotADirectoryError, PermissionError]
    try:
        from metaportrait_jax.convert.official_base import CheckpointMismatchError
        from metaportrait_jax.data.official_layout import DataError
        from metaportrait_jax.data.preprocess import MissingToolsError
        from metaportrait_jax.train.checkpoint import CheckpointError
        errors += [CheckpointMismatchError, DataError, CheckpointError, MissingToolsError]
    except ImportError:
        pass
    return tuple(errors)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _index_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_process_flags(parser: argparse.ArgumentParser) -> None:
    """--coordinator, --num-processes, --process-id: one process of a multi-process job (see launch/README.md)."""
    group = parser.add_argument_group("multi-process jobs (else METAPORTRAIT_* variables, SLURM or a JobSet)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordination service")
    group.add_argument("--num-processes", type=_positive_int, metavar="N", help="processes in the job")
    group.add_argument("--process-id", type=int, metavar="I", help="this process's id, 0 .. N-1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaportrait-jax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="parameters per sub-network and GMACs per frame")
    p.add_argument("--config", default=os.path.join(REPO_CONFIGS, "official_256.py"))
    p.set_defaults(run=cmd_summary)

    p = sub.add_parser("convert", help="convert official PyTorch checkpoints")
    p.add_argument("what", choices=["official-base", "official-sr"],
                   help="official-base: ckpt_base.pth.tar; official-sr: temporal_gfpgan.pth or GFPGANv1.3.pth")
    p.add_argument("--checkpoint", required=True, help="the .pth file (read without executing pickled code)")
    p.add_argument("--output", required=True, help="new directory for the Orbax checkpoint and config.json")
    p.add_argument("--config", help="default: configs/official_256.py (base) or configs/temporal_sr.py (sr)")
    p.add_argument("--key", help="official-sr: the state dict's entry (default: params, else params_ema)")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("enhance", help="temporal super-resolution of a clip (2x, seamless over long videos)")
    p.add_argument("--checkpoint", required=True, help="a temporal SR model checkpoint")
    p.add_argument("--input", required=True, help="a folder of frames (name order) or an mp4")
    p.add_argument("--output", required=True, help="OUT/<frame name> and OUT/out_<size>.mp4 go here")
    p.add_argument("--chunk", type=_positive_int, help="output frames per compiled step (default: the config's)")
    p.set_defaults(run=cmd_enhance)

    p = sub.add_parser("animate", help="animate a portrait photo with a driving video, or official-layout data")
    p.add_argument("--checkpoint", required=True,
                   help="a model checkpoint (save_model directory: pretrained, converted or personalised)")
    p.add_argument("--source", metavar="PHOTO", help="portrait photo to animate (any size; the face is found and "
                   "cropped); needs a model with mediapipe478 landmarks and 128-d identities")
    p.add_argument("--driving", metavar="VIDEO", help="video whose face motion drives the photo")
    p.add_argument("--official-data", help="a folder in the official inference layout (self-reconstruction)")
    p.add_argument("--output", required=True, help="OUT.mp4 with --source/--driving; a folder with --official-data")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--motion", choices=["relative", "absolute"],
                   help="relative (default): the photo's own landmarks moved by the driving face's change from its "
                        "first frame, scale aligned; absolute: the driving landmarks as they are (same person)")
    p.add_argument("--side-by-side", action="store_true", help="write source | driving | result")
    p.add_argument("--max-frames", type=_positive_int, help="animate only the first N driving frames")
    p.add_argument("--sr", metavar="DIR", help="then a temporal super-resolution checkpoint doubles the size: the mp4 "
                   "with --source/--driving; OUT/sr_<size>/ frames and mp4 with --official-data")
    p.set_defaults(run=cmd_animate)

    p = sub.add_parser("evaluate", help="self-reconstruction and cross-identity metrics (JSON and Markdown)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="a TFDS frame data set (synthetic_talking_heads or "
                   "talking_head_videos: the folder with frames.json, or one above it) or an official-layout folder")
    p.add_argument("--split", default="test", help="TFDS split (default test)")
    p.add_argument("--output", required=True, help="folder for metrics.json, metrics.md and sample grids")
    p.add_argument("--max-persons", type=_positive_int, help="evaluate the first N persons")
    p.add_argument("--max-frames", type=_positive_int, help="driving frames per person (default all)")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--fid-weights", metavar="PTH", help="Inception-v3 state dict for FID: pytorch-fid's "
                   "pt_inception-2015-12-05-6726825d.pth (FID as published) or torchvision's inception_v3_google")
    p.add_argument("--fid-variant", choices=["pytorch_fid", "torchvision"],
                   help="which network the weights are for (default: told by their fc size)")
    p.add_argument("--no-face-metrics", action="store_true", help="skip CSIM, AED, AKD and MKR (dlib, MediaPipe)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("preprocess", help="face crops, MediaPipe landmarks and dlib identities from real videos")
    p.add_argument("--input", required=True,
                   help="a video, a folder of frame images (one clip), or a folder of videos and frame folders")
    p.add_argument("--output", required=True, help="output root in the official layout (a rerun resumes it)")
    p.add_argument("--size", type=_positive_int, default=256, help="side of the square face crops in pixels")
    p.add_argument("--tfds", metavar="DATA_DIR", help="also build a talking_head_videos TFDS data set there")
    p.set_defaults(run=cmd_preprocess)

    p = sub.add_parser("data", help="build a TFDS data set (array_record) of frames for the input pipelines")
    p.add_argument("what", choices=["synthetic", "layout"],
                   help="synthetic: the procedural talking heads; layout: an official-layout folder")
    p.add_argument("--data-dir", required=True, help="TFDS data directory to build into")
    p.add_argument("--config", default="r64", help="synthetic: r64, r128, r256, r64_tiny, r64_large, r256_large")
    p.add_argument("--root", help="layout: the official-layout folder (e.g. `preprocess` output)")
    p.add_argument("--topology", default="mediapipe478", help="layout: landmark topology of its *_ldmk.npy files")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--id-dim", type=int, default=128, help="layout: size of the src_<k>_id.npy embeddings")
    p.add_argument("--test-persons", type=int, default=0, help="layout: the last N clips form the test split")
    p.set_defaults(run=cmd_data)

    p = sub.add_parser("train", help="pretrain the warp or full stage, or train temporal SR (resumes)")
    p.add_argument("--config", required=True, help="e.g. configs/pretrain_warp.py:tiny, configs/temporal_sr.py:tiny")
    p.add_argument("--workdir", required=True, help="checkpoints, logs and the final export go here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    add_process_flags(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("meta-train", help="meta-train (Reptile, FOMAML or MAML) from a pretrained model")
    p.add_argument("--config", required=True, help="e.g. configs/meta_train.py:tiny")
    p.add_argument("--workdir", required=True, help="checkpoints, logs and the final export go here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    add_process_flags(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("personalize", help="fine-tune a model on one person (resumes from --output)")
    p.add_argument("--checkpoint", required=True, help="a model checkpoint (pretrained, meta-trained, ...)")
    p.add_argument("--data", required=True, help="the person's data: a TFDS data set dir or an official-layout folder")
    p.add_argument("--split", default="test", help="TFDS split")
    p.add_argument("--person", type=int, help="person index (needed when the data holds several)")
    p.add_argument("--clips", type=_index_list, help="the person's clips to learn from, e.g. 0 or 0,2 (default all)")
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--seconds", type=float,
                   help="wall-time budget instead of --steps (counted from the first, compiling, step on)")
    p.add_argument("--output", required=True, help="directory for the personalised model checkpoint (and run/)")
    p.add_argument("--batch-size", type=_positive_int, default=4)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=cmd_personalize)

    p = sub.add_parser("benchmark", help="adaptation: personalisation curves of pretrained vs meta-trained starts")
    p.add_argument("what", choices=["adaptation"])
    p.add_argument("--config", required=True, help="a meta-training config, e.g. configs/meta_train.py:tiny")
    p.add_argument("--pretrained", required=True, help="the standard pretrained model checkpoint (full stage)")
    p.add_argument("--workdir", required=True, help="meta-training runs and the report (a rerun resumes)")
    p.add_argument("--algorithms", type=lambda t: t.split(","), default=["reptile", "fomaml", "maml"])
    p.add_argument("--seconds-per-algorithm", type=float, default=600.0,
                   help="equal meta-training wall time, counted after each run's first (compiling) step")
    p.add_argument("--meta-steps", type=_positive_int, default=10 ** 6, help="step cap per algorithm")
    p.add_argument("--persons", type=_positive_int, default=8, help="held-out persons")
    p.add_argument("--batch-size", type=_positive_int, default=4, help="personalisation batch")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=cmd_benchmark)

    p = sub.add_parser("demo", help="end to end on the synthetic data: build, pretrain, meta-train, personalise")
    p.add_argument("--output", default="results/demo", help="work directory (a rerun resumes it)")
    # Defaults sized for 10 minutes on 2 CPU cores.
    p.add_argument("--warp-steps", type=_positive_int, default=150)
    p.add_argument("--full-steps", type=_positive_int, default=150)
    p.add_argument("--meta-steps", type=_positive_int, default=20)
    p.add_argument("--meta-tasks", type=_positive_int, default=2, help="tasks per meta-batch")
    p.add_argument("--personalize-steps", type=_positive_int, default=30)
    p.add_argument("--persons", type=_positive_int, default=2, help="held-out persons to personalise and animate")
    p.add_argument("--batch-size", type=_positive_int, default=2,
                   help="pairs per training batch, per meta-learning support/query set and per personalisation step")
    p.add_argument("--seed", type=int, default=365)
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
    try:
        args.run(args, overrides)
    except _user_errors() as e:
        message = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}"
        print(f"metaportrait-jax: error: {message or type(e).__name__}", file=sys.stderr)
        _leave_failed_job(2)
        return 2
    except Exception:
        if _in_multiprocess_job():
            traceback.print_exc()
            _leave_failed_job(1)
        raise
    return 0


def _in_multiprocess_job() -> bool:
    if "jax" not in sys.modules:  # nothing joined a job yet
        return False
    from metaportrait_jax.train.distributed import in_multiprocess_job

    return in_multiprocess_job()


def _leave_failed_job(status: int) -> None:
    """In a multi-process job, exits now rather than wait at exit for processes that may be waiting for this one."""
    if _in_multiprocess_job():
        from metaportrait_jax.train.distributed import abandon_job

        abandon_job(status)


if __name__ == "__main__":
    sys.exit(main())
