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
import numpy as np
from jax.experimental import multihost_utils

from metaportrait_jax.convert.vgg import perceptual_features
from metaportrait_jax.data import sources
from metaportrait_jax.data.pipeline import make_iterator
from metaportrait_jax.data.sources import FrameSource
from metaportrait_jax.errors import UserError
from metaportrait_jax.eval.adaptation import personalization_config
from metaportrait_jax.ops.topology import get_topology
from metaportrait_jax.train.checkpoint import CONFIG_FILE, read_checkpoint_config, require_network, save_model
from metaportrait_jax.train.loop import run
from metaportrait_jax.train.tasks import get_task


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
    return sources.ClipSubset(frames, person_clips(frames, path, person, clips))


def person_clips(frames: FrameSource, path: str, person: int | None = None, clips: Sequence[int] | None = None
                 ) -> np.ndarray:
    """The clip indices (into `frames.clips`) of `person`'s clips, all or the given ordinals; `person` may be None
    when the data at `path` hold one person."""
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
    return own[ordinals]


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
    """Runs (or resumes) the training `config` describes (its `task`: "generator" pretraining, "meta" learning from
    `init_from` with spectral norm folded, "temporal_sr"; `train.tasks`). The model checkpoint goes to
    `<workdir>/export` (temporal SR: also `export_ema/`)."""
    return _train(config, workdir, progress)


def personalize(checkpoint: str, data: str, output: str, steps: int | None = None, seconds: float | None = None,
                split: str = "test", person: int | None = None, clips: Sequence[int] | None = None,
                batch_size: int = 4, learning_rate: float = 2e-4, seed: int = 0,
                progress: bool = True) -> TrainResult:
    """Fine-tunes a (meta-)trained model on one person's clips for `steps` steps or `seconds` of wall time (exactly
    one); the personalised model checkpoint is `output` (resumable from `output/run`). The result's `history` is
    the loss per step."""
    if (steps is None) == (seconds is None):
        raise UserError("personalize needs exactly one of --steps N or --seconds S")
    stored = read_checkpoint_config(checkpoint)
    require_network(stored, "generator", checkpoint)
    model = stored.model
    model.use_sn = False  # personalisation adapts the weights the network applies: spectral norm is folded in
    frames = open_person_frames(data, model, split, person, clips)
    config = personalization_config(model, steps or 10 ** 9, seconds or 0.0, batch_size, learning_rate, seed=seed)
    config.init_from = os.path.abspath(checkpoint)
    output = os.path.abspath(output)
    return _train(config, os.path.join(output, "run"), progress, frames, output)


def _export_is_current(directory: str, config: ml_collections.ConfigDict) -> bool:
    """Whether `directory` holds the export of this run already (a rerun of a finished run). An export of fewer
    steps (the run was since extended with a larger `train.steps`) is kept as `<directory>.step<N>` and False is
    returned, so the longer run's model replaces it."""
    # config.json is written last, after the collective save every process takes part in: no process can see it
    # before all have decided to save
    if not os.path.exists(os.path.join(directory, CONFIG_FILE)):
        return False
    stored_steps = int(read_checkpoint_config(directory).train.steps)
    if stored_steps == int(config.train.steps):
        return True
    if jax.process_index() == 0:
        os.replace(directory, f"{directory}.step{stored_steps}")
    if jax.process_count() > 1:  # every process sees the old export moved before the collective save
        multihost_utils.sync_global_devices("old export moved")
    return False


def _train(config: ml_collections.ConfigDict, workdir: str, progress: bool, frames: FrameSource | None = None,
           export: str | None = None) -> TrainResult:
    """`train`, with `frames` replacing the config's data and `export` the model checkpoint's directory."""
    tic = time.perf_counter()
    task = get_task(config)
    task.check(config)  # before the data are opened (and perhaps built)
    frames = frames if frames is not None else task.open_frames(config)
    try:
        dataset, spec = task.dataset(config, frames, jax.process_index(), jax.process_count())
    except ValueError as e:  # a config value the pipeline cannot use
        raise UserError(f"config: {e}") from None
    network, params = perceptual_features(config.train.perceptual, taps=task.perceptual_taps)
    init_args = ({"params": params},)
    encoder = None
    if config.train.loss.get("identity", 0.0) > 0:
        encoder, encoder_variables = load_identity_encoder(config.train.identity_encoder)
        init_args += (encoder_variables,)
    trainer = task.trainer(config, network, encoder)
    outcome = run(config, workdir, lambda s: make_iterator(dataset, spec, s), trainer, task.network, init_args,
                  progress=progress)
    export = export or os.path.join(workdir, "export")
    if outcome.done:
        for suffix, (variables, discriminator) in trainer.exports(outcome.state).items():
            if _export_is_current(export + suffix, config):
                continue
            save_model(export + suffix, config, variables, discriminator, network=task.network)
        if jax.process_count() > 1:  # no process may go on (e.g. to a stage reading the export) before it is complete
            multihost_utils.sync_global_devices("export written")
    return TrainResult(export if outcome.done else None, int(outcome.state.step), time.perf_counter() - tic,
                       outcome.history)
