"""The kinds of training, by `config.task`: each declares the network it trains (a `models.networks` name), its
config checks, where its frames come from, its input pipeline and its trainer. Nothing outside this module asks
which task a config is; a new task is one module defining these plus one line in TASKS, or, from outside the package
(research code, examples/), one `register_task` call.
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import grain
import ml_collections
import numpy as np

from metaportrait_jax.config import ConfigError
from metaportrait_jax.data.datasets import open_frames
from metaportrait_jax.data.pipeline import PipelineSpec, make_dataset
from metaportrait_jax.data.sources import FrameSource
from metaportrait_jax.data.sr_clips import sr_dataset
from metaportrait_jax.models.generator import generator_forward
from metaportrait_jax.train.checkpoint import load_model, require_network
from metaportrait_jax.train.meta_step import MetaTrainer, check_meta_config
from metaportrait_jax.train.sr_step import SRTrainer
from metaportrait_jax.train.step import Trainer, check_train_config

Dataset = tuple[grain.MapDataset, PipelineSpec]


@dataclasses.dataclass(frozen=True)
class Task:
    network: str                                                       # what its checkpoints hold
    check: Callable[[ml_collections.ConfigDict], None]                 # raises ConfigError before any data is read
    open_frames: Callable[[ml_collections.ConfigDict], FrameSource]    # the frames `config.data` names
    dataset: Callable[[ml_collections.ConfigDict, FrameSource, int, int], Dataset]  # (config, frames, process
    # index, process count) -> this process's share of every global batch, and the spec to iterate it
    trainer: Callable[[ml_collections.ConfigDict, nn.Module, nn.Module | None], object]  # (config, perceptual
    # feature network, identity encoder or None) -> a `train.loop.Steppable`
    perceptual_taps: str = "relu"                                      # the VGG activations its perceptual loss uses


def _fitting_frames(config: ml_collections.ConfigDict) -> FrameSource:
    return open_frames(config.data, config.model)


def _pairs(config: ml_collections.ConfigDict, frames: FrameSource, process_index: int, process_count: int) -> Dataset:
    spec = PipelineSpec("pairs", config.train.batch_size, seed=config.seed, source=config.data.pair_source,
                        workers=config.data.workers)
    return make_dataset(frames, spec, process_index, process_count), spec


def _episodes(config: ml_collections.ConfigDict, frames: FrameSource, process_index: int, process_count: int
              ) -> Dataset:
    meta = config.meta
    spec = PipelineSpec("episodes", meta.tasks, seed=config.seed, support=meta.support, query=meta.query,
                        episode_sampling=meta.episode_sampling, workers=config.data.workers)
    return make_dataset(frames, spec, process_index, process_count), spec


def _check_meta(config: ml_collections.ConfigDict) -> None:
    check_train_config(config.train)
    check_meta_config(config)


def _check_temporal_sr(config: ml_collections.ConfigDict) -> None:
    if config.data.source not in ("synthetic", "tfds"):
        raise ConfigError("temporal SR trains on a TFDS frame set with high-resolution frames (data.source "
                          f"synthetic or tfds), got {config.data.source!r}")


def checkpoint_renderer(checkpoint: str, image_size: int) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """A base model checkpoint as `render(batch) -> predictions [N, H, W, 3]` (numpy, [0, 1]): the temporal SR
    pipeline's `data.input_source='base_model'` inputs."""
    config, variables, _ = load_model(checkpoint)
    require_network(config, "generator", checkpoint, " (data.base_checkpoint needs a base model)")
    if config.model.image_size != image_size:
        raise ConfigError(f"data.base_checkpoint {checkpoint}: its model makes {config.model.image_size}² images, "
                          f"the data's low-resolution frames are {image_size}²")
    forward = generator_forward(config.model)
    return lambda batch: np.asarray(forward(variables, batch)["prediction"])


def _sr_clips(config: ml_collections.ConfigDict, frames: FrameSource, process_index: int, process_count: int
              ) -> Dataset:
    render = None
    if config.data.input_source == "base_model" and config.data.base_checkpoint:
        render = checkpoint_renderer(config.data.base_checkpoint, frames.image_size)
    return sr_dataset(config, frames, process_index, process_count, render)


TASKS = {
    # pretraining (warp and full stages) and personalisation: source/driving pairs
    "generator": Task("generator", lambda c: check_train_config(c.train), _fitting_frames, _pairs, Trainer),
    # meta-learning an initialisation (Reptile, FOMAML, MAML) from episodes of one person's clips
    "meta": Task("generator", _check_meta, _fitting_frames, _episodes, MetaTrainer),
    # 2x temporal super-resolution of clips
    "temporal_sr": Task("temporal_sr", _check_temporal_sr, lambda c: open_frames(c.data, None), _sr_clips,
                        lambda config, network, _: SRTrainer(config, network), perceptual_taps="pre_relu"),
}


def register_task(name: str, task: Task) -> None:
    """Makes `task` what `config.task = name` trains. A name already registered is refused unless it holds an equal
    task (so that a script may register its task again, e.g. when it is rerun in one interpreter)."""
    if not isinstance(task, Task):
        raise ConfigError(f"register_task {name!r}: expected a Task, got {type(task).__name__}")
    if name in TASKS and TASKS[name] != task:
        raise ConfigError(f"register_task: task {name!r} is already registered (as {TASKS[name]}); choose another "
                          f"name")
    TASKS[name] = task


def get_task(config: ml_collections.ConfigDict) -> Task:
    """The task `config.task` names (configs written before the field: "meta" with a meta section, else
    "generator")."""
    name = config.get("task") or ("meta" if "meta" in config else "generator")
    if name not in TASKS:
        raise ConfigError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]
