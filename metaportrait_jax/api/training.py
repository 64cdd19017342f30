"""Training from Python: pretraining (warp, full), meta-training, temporal SR and personalisation, each resumable
from its work directory and returning a `TrainResult`."""

import dataclasses
import importlib
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from jax.experimental import multihost_utils

from metaportrait_jax.convert.official_base import load_sn_free_generator
from metaportrait_jax.convert.vgg import perceptual_features
from metaportrait_jax.data import datasets, sources
from metaportrait_jax.data.pipeline import PipelineSpec, make_dataset, make_iterator
from metaportrait_jax.data.sr_clips import sr_dataset
from metaportrait_jax.errors import UserError
from metaportrait_jax.eval.adaptation import personalization_config
from metaportrait_jax.eval.animate import checkpoint_renderer
from metaportrait_jax.ops.topology import get_topology
from metaportrait_jax.train.checkpoint import CONFIG_FILE, check_same_model, save_model
from metaportrait_jax.train.loop import run
from metaportrait_jax.train.meta_step import MetaTrainer, check_meta_config
from metaportrait_jax.train.sr_step import SRTrainer
from metaportrait_jax.train.step import Trainer, check_train_config


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training call did. `export` is the model checkpoint once the run is complete, else None (stopped
    early by a signal or the time budget: call again to resume); `history` holds the rows this call logged."""

    export: str | None
    steps: int                      # the run's step count now (resumed steps included)
    seconds: float                  # this call's wall time, compilation included
    history: list[dict[str, float]]

    @property
    def metrics(self) -> dict[str, float]:
        """The last logged row ({} if this call ran no step, e.g. a finished run called again)."""
        return self.history[-1] if self.history else {}


def open_frames(data: ml_collections.ConfigDict, model: ml_collections.ConfigDict | None) -> sources.FrameSource:
    """The frame source a config's `data` section names (building the synthetic set on first use); with a `model`,
    checked to fit it."""
    if data.source == "synthetic":
        frames = sources.TfdsFrames(datasets.build_synthetic(data.data_dir, data.synthetic), data.split)
    elif data.source == "tfds":
        frames = sources.TfdsFrames(data.path, data.split)
    elif data.source == "layout":
        frames = sources.OfficialLayoutFrames(data.path, get_topology(model.topology), model.image_size, model.id_dim)
    else:
        raise UserError(f"config.data.source must be synthetic, tfds or layout, got {data.source!r}")
    if model is None:
        return frames
    problems = sources.fit_problems(frames, model)
    if problems:
        raise UserError(f"the data does not fit the model: {', '.join(problems)}; set --config.model.* to match")
    return frames


def open_person_frames(path: str, model: ml_collections.ConfigDict, split: str = "test", person: int | None = None,
                       clips: Sequence[int] | None = None) -> sources.ClipSubset:
    """One person's clips (all, or the given ordinals) of a data set: a TFDS directory built by `data` /
    `preprocess --tfds`, or an official-layout folder (`preprocess` output; one person per identity key)."""
    if os.path.isfile(os.path.join(path, sources.METADATA_FILE)):
        frames = sources.TfdsFrames(path, split)
    elif os.path.isdir(path):
        frames = sources.OfficialLayoutFrames(path, get_topology(model.topology), model.image_size, model.id_dim)
    else:
        raise UserError(f"{path}: no such data folder")
    persons = [int(p) for p in frames.clips.persons()]
    if person is None:
        if len(persons) != 1:
            raise UserError(f"{path}: holds {len(persons)} persons; choose one with --person (one of "
                            f"{', '.join(map(str, persons[:20]))}{' ...' if len(persons) > 20 else ''})")
        person = persons[0]
    if person not in persons:
        raise UserError(f"{path}: no person {person} (it has {', '.join(map(str, persons[:20]))})")
    own = frames.clips.clips_of(person)
    ordinals = list(range(len(own))) if clips is None else list(clips)
    if not ordinals or any(not 0 <= o < len(own) for o in ordinals):
        raise UserError(f"{path}: person {person} has clips 0..{len(own) - 1}, asked for {ordinals}")
    return sources.ClipSubset(frames, own[ordinals])


def load_identity_encoder(spec: str) -> tuple[Any, Any]:
    """`package.module:factory` -> factory() = (flax module, variables): the pluggable identity-loss encoder."""
    module_name, _, factory = spec.partition(":")
    if not module_name or not factory:
        raise UserError(f"train.identity_encoder must look like package.module:factory, got {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), factory)()
    except (ImportError, AttributeError) as e:
        raise UserError(f"train.identity_encoder {spec!r}: {e}") from None


def train(config: ml_collections.ConfigDict, workdir: str, progress: bool = True) -> TrainResult:
    """Runs (or resumes) the training `config` describes: pretraining, meta-training (a config with a `meta`
    section, starting from `init_from` with spectral norm folded) or temporal SR (`task='temporal_sr'`). The
    model checkpoint goes to `<workdir>/export` (temporal SR: also `export_ema/`)."""
    if config.get("task") == "temporal_sr":
        return _train_temporal_sr(config, workdir, progress)
    return _train_generator(config, workdir, progress)


def personalize(checkpoint: str, data: str, output: str, steps: int | None = None, seconds: float | None = None,
                split: str = "test", person: int | None = None, clips: Sequence[int] | None = None,
                batch_size: int = 4, learning_rate: float = 2e-4, seed: int = 0,
                progress: bool = True) -> TrainResult:
    """Fine-tunes a (meta-)trained model on one person's clips for `steps` steps or `seconds` of wall time (exactly
    one); the personalised model checkpoint is `output` (resumable from `output/run`). The result's `history` is
    the loss per step."""
    if (steps is None) == (seconds is None):
        raise UserError("personalize needs exactly one of --steps N or --seconds S")
    stored, generator = load_sn_free_generator(checkpoint)
    frames = open_person_frames(data, stored.model, split, person, clips)
    config = personalization_config(stored.model, steps or 10 ** 9, seconds or 0.0, batch_size, learning_rate,
                                    seed=seed)
    output = os.path.abspath(output)
    return _train_generator(config, os.path.join(output, "run"), progress, frames, generator, output)


def _train_generator(config: ml_collections.ConfigDict, workdir: str, progress: bool, frames=None,
                     start_generator: dict | None = None, export: str | None = None) -> TrainResult:
    """Pretraining (pairs, `Trainer`) or meta-training (episodes, `MetaTrainer`). `frames` replaces the config's
    data source and `start_generator` the initial generator (personalisation passes both)."""
    tic = time.perf_counter()
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
        raise UserError(f"config: {e}") from None
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
    outcome = run(config, workdir, lambda s: make_iterator(dataset, spec, s), trainer,
                  ({"params": params}, encoder_variables, start_generator), progress=progress)
    if outcome.done:
        export = export or os.path.join(workdir, "export")
        # config.json is written last, after the collective save every process takes part in: no process can see
        # it before all have decided to save
        if not os.path.exists(os.path.join(export, CONFIG_FILE)):
            discriminator = None if meta or start_generator is not None else outcome.state.discriminator
            save_model(export, config, outcome.state.generator, discriminator)
        if jax.process_count() > 1:  # no process may go on (e.g. to a stage reading the export) before it is complete
            multihost_utils.sync_global_devices("export written")
    return TrainResult(export if outcome.done else None, int(outcome.state.step), time.perf_counter() - tic,
                       outcome.history)


def _train_temporal_sr(config: ml_collections.ConfigDict, workdir: str, progress: bool) -> TrainResult:
    """Temporal SR training; exports `export/` (the weights, which the official inference uses) and `export_ema/`."""
    tic = time.perf_counter()
    if config.data.source not in ("synthetic", "tfds"):
        raise UserError("temporal SR trains on a TFDS frame set with high-resolution frames (data.source "
                        f"synthetic or tfds), got {config.data.source!r}")
    frames = open_frames(config.data, None)
    render = None
    if config.data.input_source == "base_model" and config.data.base_checkpoint:
        render = checkpoint_renderer(config.data.base_checkpoint, frames.image_size)
    try:
        dataset, spec = sr_dataset(config, frames, jax.process_index(), jax.process_count(), render)
    except ValueError as e:
        raise UserError(f"config: {e}") from None
    network, params = perceptual_features(config.train.perceptual, taps="pre_relu")
    outcome = run(config, workdir, lambda s: make_iterator(dataset, spec, s), SRTrainer(config, network),
                  ({"params": params},), progress=progress)
    done = int(outcome.state.step) >= config.train.steps
    export = os.path.join(workdir, "export")
    if done:
        for directory, params in ((export, outcome.state.params), (export + "_ema", outcome.state.ema)):
            if jax.process_index() == 0 and not os.path.exists(directory):
                save_model(directory, config, {"params": jax.device_get(params)})
    return TrainResult(export if done else None, int(outcome.state.step), time.perf_counter() - tic,
                       outcome.history)
