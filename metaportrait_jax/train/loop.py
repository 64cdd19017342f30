"""The training loop: sharded jit step, Orbax checkpoints with the data-iterator state, preemption, logs.

The data pipeline is handed in (`make_batches(iterator_state) -> iterator`), so this module depends on nothing
above `train/`. Work directory:

    config.json              the resolved config (also inside every checkpoint)
    checkpoints/<step>/      Orbax: train state + data-iterator state; keep-N, async
    metrics.jsonl            one JSON object per logged step
    tensorboard/             tensorboardX scalars and image grids (source | driving | warped | prediction; the
                             temporal SR trainer: input | target | prediction)
"""

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from metaportrait_jax.config import save_config
from metaportrait_jax.train.distributed import describe_topology
from metaportrait_jax.train.sharding import batch_sharding, global_batch, make_mesh, replicated, tree_sharding
from metaportrait_jax.train.start import start_state


class BatchIterator(Protocol):
    def __next__(self) -> dict[str, np.ndarray]: ...

    def get_state(self) -> dict: ...


class Steppable(Protocol):
    """What `run` trains: the pretraining `Trainer`, the `MetaTrainer`, the `SRTrainer`; states are pytrees."""

    description: str        # progress-bar label
    progress_metric: str    # the metric shown next to the bar
    image_tag: str          # TensorBoard tag of the preview grids

    def init_state(self, rng: jax.Array, *args) -> Any: ...

    def merge(self, state: Any, stored: dict) -> Any: ...  # a fresh state with `init_from`'s variables (pure)

    def compile_step(self, state_sharding, batch_sharding, metrics_sharding) -> Callable: ...

    def step(self, state: Any, batch: dict) -> tuple[Any, dict[str, jax.Array]]: ...

    def preview(self, state: Any, batch: dict) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]: ...

    def image_grid(self, shown: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> np.ndarray: ...


class Preemption:
    """Turns SIGTERM (and SIGINT) into a flag the loop checks between steps, so it can save and exit cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        self.requested = True
        print(f"\nreceived signal {signum}: saving a checkpoint after this step", flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def checkpoint_manager(workdir: str, train: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=train.keep_checkpoints, create=True,
                                           enable_async_checkpointing=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


class MetricsLog:
    """JSON lines and TensorBoard (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool):
        self.enabled = enabled
        if enabled:
            from tensorboardX import SummaryWriter

            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for name, value in metrics.items():
            self.writer.add_scalar(f"train/{name}", value, step)

    def image(self, step: int, grid: np.ndarray, tag: str) -> None:
        if self.enabled:
            self.writer.add_image(f"train/{tag}", grid, step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.writer.close()


class RunOutcome(NamedTuple):
    state: Any                   # the final train state
    done: bool                   # False if a signal stopped the run early
    history: list[dict[str, float]]  # the rows this invocation logged (also in metrics.jsonl), step included


def run(config: ml_collections.ConfigDict, workdir: str, make_batches: Callable[[dict | None], BatchIterator],
        trainer: Steppable, network: str, init_args: tuple = (), progress: bool = True) -> RunOutcome:
    """Trains `config.train.steps` steps of `trainer`, whose states hold a `network` (a `models.networks` name);
    the start (resume, `init_from` or fresh, `train.start`) gets `init_args` after the random key.

    Stops early, after saving, on SIGTERM/SIGINT or once `config.train.max_seconds` (if > 0) have passed after
    this run's first step (which compiles: the budget is for training, whatever the compiler's speed).
    """
    train = config.train
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        save_config(config, os.path.join(workdir, "config.json"))
    mesh = make_mesh(train.fsdp)
    if jax.process_index() == 0:
        print(describe_topology(mesh), flush=True)
    abstract = jax.eval_shape(trainer.init_state, jax.random.key(0), *init_args)
    state_sharding = tree_sharding(abstract, mesh)
    compiled_step = trainer.compile_step(state_sharding, batch_sharding(mesh), replicated(mesh))

    def step_fn(state, batch):
        with jax.set_mesh(mesh):  # traced under the mesh: a step may place values by axis name
            return compiled_step(state, batch)

    shown_rows = jax.jit(trainer.preview, out_shardings=replicated(mesh))

    manager = checkpoint_manager(workdir, train)
    state, iterator_state, how = start_state(config, manager, trainer, network, init_args, abstract, state_sharding)
    if jax.process_index() == 0:
        print(how, flush=True)
    batches = make_batches(iterator_state)
    start = int(state.step)

    log = MetricsLog(workdir, jax.process_index() == 0)
    bar = None
    if progress and jax.process_index() == 0:
        from tqdm import tqdm

        bar = tqdm(total=train.steps, initial=start, desc=trainer.description, unit="step", dynamic_ncols=True)

    def save(step: int, force: bool = False) -> None:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   data=ocp.args.JsonSave(batches.get_state())), force=force)

    preempted, history = False, []
    with Preemption() as preemption:
        tic = began = time.perf_counter()
        logged = start
        budget_began = None  # the time budget starts after the first step, which compiles
        for step in range(start + 1, train.steps + 1):
            batch = global_batch(next(batches), mesh)
            state, metrics = step_fn(state, batch)
            budget_began = budget_began or time.perf_counter()
            preempted, out_of_time = any_process(preemption.requested,
                                                  0 < train.max_seconds <= time.perf_counter() - budget_began)
            if step % train.checkpoint_every == 0 or step == train.steps or preempted or out_of_time:
                save(step, force=True)
            if step % train.log_every == 0 or step == train.steps or preempted or out_of_time:
                values = {k: float(host_value(v)) for k, v in metrics.items()}
                values["steps_per_second"] = (step - logged) / (time.perf_counter() - tic)
                values["elapsed_seconds"] = time.perf_counter() - began  # this run's wall time, compile included
                tic, logged = time.perf_counter(), step
                log.scalars(step, values)
                history.append({"step": step, **values})
                if bar is not None:
                    bar.set_postfix(loss=f"{values[trainer.progress_metric]:.4f}",
                                    sps=f"{values['steps_per_second']:.2f}")
            if train.image_every and (step % train.image_every == 0 or step == train.steps):
                shown, outputs = jax.tree.map(host_value, shown_rows(state, batch))
                log.image(step, trainer.image_grid(shown, outputs), trainer.image_tag)
            if bar is not None:
                bar.update(1)
            if preempted or out_of_time:
                break
    manager.wait_until_finished()
    manager.close()
    log.close()
    if bar is not None:
        bar.close()
    return RunOutcome(state, not preempted, history)


def read_history(workdir: str) -> list[dict[str, float]]:
    """Every row a run in `workdir` logged (metrics.jsonl), e.g. of runs finished by an earlier invocation."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def any_process(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over all processes. A decision to stop (a signal, a local clock) must be taken by every
    process at the same step: signals reach processes at different steps or only some of them, and clocks differ."""
    if jax.process_count() == 1:
        return flags
    return tuple(bool(f) for f in np.any(multihost_utils.process_allgather(np.asarray(flags)), axis=0))


def host_value(x: jax.Array) -> np.ndarray:
    """A replicated global array as a numpy array on this host (works with several processes)."""
    return np.asarray(x.addressable_data(0))
