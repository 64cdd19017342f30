"""The training loop: sharded jit step, Orbax checkpoints with the data-iterator state, preemption, logs.

The data pipeline is handed in (`make_batches(iterator_state) -> iterator`), so this module depends on nothing
above `train/`. Work directory:

    config.json              the resolved config (also inside every checkpoint)
    checkpoints/<step>/      Orbax: train state + data-iterator state; keep-N, async
    metrics.jsonl            one JSON object per logged step
    tensorboard/             tensorboardX scalars and image grids (source | driving | warped | prediction; the
                             temporal SR trainer: input | target | prediction)
"""

import functools
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
from metaportrait_jax.train.sharding import (batch_sharding, global_batch, jit_step, make_mesh, replicated,
                                            tree_sharding)


class BatchIterator(Protocol):
    def __next__(self) -> dict[str, np.ndarray]: ...

    def get_state(self) -> dict: ...


class Steppable(Protocol):
    """What `run` trains: the pretraining `Trainer`, the `MetaTrainer`, ...; states are pytrees."""

    description: str        # progress-bar label
    progress_metric: str    # the metric shown next to the bar

    def init_state(self, rng: jax.Array, *args) -> Any: ...

    def start(self, state: Any) -> Any: ...  # adjusts a fresh state (e.g. copies weights named in the config)

    def step(self, state: Any, batch: dict) -> tuple[Any, dict[str, jax.Array]]: ...

    def preview(self, state: Any, batch: dict) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]: ...

    # Optional: `image_grid(shown, outputs) -> uint8 [H, W, 3]` and `image_tag`, for previews that are not
    # source/driving pairs (the temporal SR trainer's clips); the default is `image_grid` below.


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


def image_grid(batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray], rows: int = 4) -> np.ndarray:
    """`[rows·H, 4·W, 3]` uint8: source | driving | warped source | prediction (if any), one example per row."""
    columns = [batch["source"], batch["driving"], outputs["deformed"]]
    if "prediction" in outputs:
        columns.append(outputs["prediction"])
    rows = min(rows, len(batch["source"]))
    grid = np.concatenate([np.concatenate([np.asarray(c[r]) for c in columns], axis=1) for r in range(rows)], axis=0)
    return (np.clip(grid, 0, 1) * 255).astype(np.uint8)


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
        trainer: Steppable, init_args: tuple = (), progress: bool = True) -> RunOutcome:
    """Trains `config.train.steps` steps of `trainer` (resuming from the latest checkpoint in `workdir`); returns
    the state. A fresh state is `trainer.start(trainer.init_state(rng, *init_args))` (arguments, not constants
    closed over, so large pretrained weights do not slow compilation).

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
    # a trainer may compose its step of several programs (`MetaTrainer`: MAML one inner step at a time)
    compile_step = getattr(trainer, "compile_step", functools.partial(jit_step, trainer.step))
    compiled_step = compile_step(state_sharding, batch_sharding(mesh), replicated(mesh))

    def step_fn(state, batch):
        with jax.set_mesh(mesh):  # traced under the mesh: a step may place values by axis name
            return compiled_step(state, batch)

    shown_rows = jax.jit(trainer.preview, out_shardings=replicated(mesh))

    manager = checkpoint_manager(workdir, train)
    latest = manager.latest_step()
    if latest is not None:
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
                              state_sharding)
        restored = manager.restore(latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                    data=ocp.args.JsonRestore()))
        state, iterator_state = restored.state, restored.data
        if jax.process_index() == 0:
            print(f"resumed from {workdir}/checkpoints/{latest}", flush=True)
    else:
        init = jax.jit(trainer.init_state, out_shardings=state_sharding)
        # host copies: arrays committed to one device (loaded weights) cannot enter a program whose mesh spans
        # several processes
        state = jax.device_put(trainer.start(init(jax.random.key(config.seed), *jax.device_get(init_args))),
                               state_sharding)
        iterator_state = None
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
                grid = getattr(trainer, "image_grid", image_grid)(shown, outputs)
                log.image(step, grid, getattr(trainer, "image_tag", "source_driving_warped_prediction"))
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
