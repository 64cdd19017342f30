"""Multi-process jobs on this machine (jax.distributed, gloo collectives, `launch/local.sh`): 2 processes x 2 devices
end where 1 process x 4 devices ends (also with FSDP-sharded parameters), a checkpoint written by 2 processes
resumes in 1, a killed process stops the
job with an error within the heartbeat bound, and a signal to one process stops all at the same step."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from multiprocess import CLI, REPO, failure_report, free_port, job_environment, latest_state, run_local
from run_tools import FLOAT64_STATE_TOLERANCE, logged_steps, xla_flags

STEPS = 3
HEARTBEAT_TIMEOUT = 10  # seconds; short so that the kill tests are quick (the default is 60)


def _config(name: str) -> str:
    return os.path.join(REPO, "configs", name)


# A few steps at global batch 4 on the 64² tiny model; {workdir} and {data} (the r64_tiny synthetic set) are filled in.
TINY = ["--workdir", "{workdir}", "--no-progress", "--config.data.source=tfds", "--config.data.path={data}",
        "--config.model.id_dim=64", "--config.train.batch_size=4", f"--config.train.steps={STEPS}",
        "--config.train.checkpoint_every=1", "--config.train.log_every=1", "--config.train.image_every=0",
        "--config.data.pair_source=random"]

# Gloo sums the cross-process gradients in another order than XLA's in-process all-reduce. In float32, where a
# gradient component is round-off alone (e.g. a conv bias right before an instance norm: its true gradient is 0),
# Adam's normalisation turns that into steps of up to ±lr that differ between the two orders: after 3 warp steps one
# hourglass kernel weight ended 1.28e-5 (0.64 lr) apart on an Intel Xeon, 3e-6 on an AMD EPYC; the full stage 4.4e-4.
# So the default all-reduce is compared in float64 (JAX_ENABLE_X64=1), where the same round-off is ~1e-16 of the
# summed terms and Adam (eps 1e-8, gradients clipped to a global norm of 0.3) turns a gradient difference dg into at
# most lr·dg/eps per step; and the topology-independent reduction (`fixed_order`) must give the same bits in float32.
# (That also needs the same kernels in every process: local.sh gives each process one thread-pool size, see there.)
FIXED_ORDER = "--config.train.gradient_reduction=fixed_order"
FLOAT64 = "--config.train.compute_dtype=float64"
# The float64 job's 2 processes also shard the large parameters over each process's 2 devices (FSDP), which the
# 1-process runs do not: the same steps on another parameter layout, and a sharded checkpoint restored unsharded.
FSDP = "--config.train.fsdp=2"

# Every subcommand that runs as a multi-process job, one line each: it must run STEPS steps and keep Orbax
# checkpoints in {workdir}/checkpoints/<step>/state (step STEPS - 1 included) and metrics.jsonl as `train` does.
# The full stage and meta-training compile minutes longer than the warp stage: they run with the slow tests.
WARP = ["train", "--config", _config("pretrain_warp.py:tiny"), *TINY]
COMMANDS = {
    "pretrain-warp-float64": [*WARP, FLOAT64],
    "pretrain-warp-fixed-order": pytest.param([*WARP, FIXED_ORDER], marks=pytest.mark.slow),
    "pretrain-full": pytest.param(["train", "--config", _config("pretrain_full.py:tiny"), *TINY, FIXED_ORDER],
                                  marks=pytest.mark.slow),
    "meta-train": pytest.param(["meta-train", "--config", _config("meta_train.py:tiny"), *TINY, FIXED_ORDER,
                                "--config.meta.support=2", "--config.meta.query=2"],
                               marks=pytest.mark.slow),
}


def _argv(command: list[str], workdir: str, data: str) -> list[str]:
    return [a.format(workdir=workdir, data=data) for a in command]


def _run(processes: int, devices: int, argv: list[str], log_dir: str) -> subprocess.CompletedProcess:
    """`local.sh processes` with `devices` each; a single process uses the test run's compilation cache (local.sh
    keeps several processes away from it, see launch/README.md): the resumed run reuses the reference run's
    programs."""
    variables = {"JAX_COMPILATION_CACHE_DIR": os.environ["JAX_COMPILATION_CACHE_DIR"]} if processes == 1 else {}
    if FLOAT64 in argv:
        variables["JAX_ENABLE_X64"] = "1"
    result = run_local(processes, devices, argv, log_dir, **variables)
    assert result.returncode == 0, failure_report(result, log_dir)
    return result




def _assert_same_state(state: dict, reference: dict, exact: bool) -> None:
    """Every array of the train state (parameters, optimiser moments, counters) bit for bit, or to
    FLOAT64_STATE_TOLERANCE (relative above 1)."""
    flat, reference_flat = jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(reference)
    assert len(flat) == len(reference_flat)
    tolerance = 0 if exact else FLOAT64_STATE_TOLERANCE
    for (path, value), expected in zip(flat, reference_flat):
        assert exact or value.dtype != np.float32, (jax.tree_util.keystr(path), value.dtype)
        np.testing.assert_allclose(value, expected, rtol=tolerance, atol=tolerance,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.minutes
@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_two_processes_end_where_one_ends_and_their_checkpoint_resumes_in_one(command, synthetic, tmp_path):
    one, two, resumed = (str(tmp_path / name) for name in ("one", "two", "resumed"))
    _run(1, 4, _argv(command, one, synthetic), str(tmp_path / "logs_one"))
    exact = FIXED_ORDER in command
    _run(2, 2, _argv(command, two, synthetic) + ([] if exact else [FSDP]), str(tmp_path / "logs_two"))
    step, reference = latest_state(one)
    assert step == STEPS and latest_state(two)[0] == STEPS
    _assert_same_state(latest_state(two)[1], reference, exact)
    assert logged_steps(two) == list(range(1, STEPS + 1))  # process 0 alone writes metrics: each step once

    # The 2-process checkpoint of step STEPS - 1 continues in 1 process (4 devices) to the uninterrupted result.
    shutil.copytree(os.path.join(two, "checkpoints", str(STEPS - 1)),
                    os.path.join(resumed, "checkpoints", str(STEPS - 1)))
    result = _run(1, 4, _argv(command, resumed, synthetic), str(tmp_path / "logs_resumed"))
    assert f"resumed from {resumed}/checkpoints/{STEPS - 1}" in result.stdout
    _assert_same_state(latest_state(resumed)[1], reference, exact)
    assert logged_steps(resumed) == [STEPS]


class _Job:
    """Processes of one job started directly (local.sh would kill the survivors itself), each logging to a file."""

    def __init__(self, command: list[str], tmp_path, processes: int = 2, devices: int = 2):
        port = free_port()
        self.processes, self.logs = [], []
        for process in range(processes):
            env = job_environment(METAPORTRAIT_COORDINATOR=f"127.0.0.1:{port}",
                                  METAPORTRAIT_NUM_PROCESSES=str(processes), METAPORTRAIT_PROCESS_ID=str(process),
                                  JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices),
                                  METAPORTRAIT_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT))
            self.logs.append(str(tmp_path / f"process_{process}.log"))
            with open(self.logs[-1], "w") as log:
                self.processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                       cwd=REPO))

    def output(self, process: int) -> str:
        with open(self.logs[process]) as f:
            return f.read()

    def wait_until(self, done, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline and all(p.poll() is None for p in self.processes), [
                self.output(i)[-3000:] for i in range(len(self.processes))]
            time.sleep(0.2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


WORKER = [sys.executable, os.path.join(REPO, "tests", "collective_worker.py")]


def _assert_killing_ends_the_survivor(job: _Job, victim: int) -> None:
    """kill -9 `victim`: the other process exits with an error, after about the heartbeat timeout (at once if the
    victim is process 0, which hosts the coordination service)."""
    job.processes[victim].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    status = job.processes[1 - victim].wait(timeout=HEARTBEAT_TIMEOUT + 120)
    elapsed = time.monotonic() - killed
    output = job.output(1 - victim)[-3000:]
    # the coordination service's abort, or first a collective's error (peer gone), which the process exits on
    assert status != 0, output
    assert elapsed < (HEARTBEAT_TIMEOUT + 20 if victim else 20), elapsed


@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_process_ends_the_other_blocked_in_a_collective(victim, tmp_path):
    with _Job(WORKER, tmp_path) as job:
        job.wait_until(lambda: all("step 3:" in job.output(i) for i in range(2)))
        _assert_killing_ends_the_survivor(job, victim)


def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path):
    with _Job(WORKER, tmp_path) as job:
        job.wait_until(lambda: all("step 3:" in job.output(i) for i in range(2)))
        job.processes[1].send_signal(signal.SIGTERM)
        statuses = [process.wait(timeout=120) for process in job.processes]
    stops = [[line for line in job.output(i).splitlines() if line.startswith("stopped at")] for i in range(2)]
    assert statuses == [0, 0] and len(stops[0]) == 1 and stops[0] == stops[1], stops


def _training(workdir: str, synthetic: str) -> list[str]:
    return [*CLI.split(), *_argv(WARP, workdir, synthetic), "--config.train.steps=1000"]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_training_process_stops_the_job_with_an_error(victim, synthetic, tmp_path):
    workdir = str(tmp_path / "run")
    with _Job(_training(workdir, synthetic), tmp_path) as job:
        job.wait_until(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "1")))  # mid-run
        _assert_killing_ends_the_survivor(job, victim)


@pytest.mark.slow
def test_sigterm_to_one_training_process_saves_both_at_the_same_step(synthetic, tmp_path):
    workdir = str(tmp_path / "run")
    with _Job(_training(workdir, synthetic), tmp_path) as job:
        job.wait_until(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "1")))
        job.processes[1].send_signal(signal.SIGTERM)
        statuses = [process.wait(timeout=300) for process in job.processes]
    assert statuses == [0, 0], [job.output(i)[-3000:] for i in range(2)]
    saved = sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit())
    assert 1 < saved[-1] < 1000 and saved[-1] == logged_steps(workdir)[-1]
    assert "rerun the same command to resume" in job.output(0)
