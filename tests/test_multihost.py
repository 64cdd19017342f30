"""Multi-process jobs on this machine (jax.distributed, gloo collectives, `launch/local.sh`): 2 processes x 2 devices
end where 1 process x 4 devices ends, a checkpoint written by 2 processes resumes in 1, and a killed process stops
the job with an error within the heartbeat bound."""

import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from multiprocess import CLI, REPO, failure_report, free_port, job_environment, latest_state, run_local
from run_tools import logged_steps

STEPS = 3
HEARTBEAT_TIMEOUT = 15  # seconds; short so that the kill test is quick (the default is 60)


def _config(name: str) -> str:
    return os.path.join(REPO, "configs", name)


# A few steps at global batch 4 on the 64² tiny model; {workdir} and {data} (the r64_tiny synthetic set) are filled in.
TINY = ["--workdir", "{workdir}", "--no-progress", "--config.data.source=tfds", "--config.data.path={data}",
        "--config.model.id_dim=64", "--config.train.batch_size=4", f"--config.train.steps={STEPS}",
        "--config.train.checkpoint_every=1", "--config.train.log_every=1", "--config.train.image_every=0",
        "--config.data.pair_source=random"]

# Every subcommand that runs as a multi-process job: it must run STEPS steps and keep Orbax checkpoints in
# {workdir}/checkpoints/<step>/state (step STEPS - 1 included) and metrics.jsonl as `train` does. Meta-training is one
# more line:  "meta-train": ["meta-train", "--config", _config("meta_train.py:tiny"), *TINY],
COMMANDS = {
    "pretrain-warp": ["train", "--config", _config("pretrain_warp.py:tiny"), *TINY],
    # the full stage compiles the discriminator and GAN losses too: minutes more, so with the slow tests
    "pretrain-full": pytest.param(["train", "--config", _config("pretrain_full.py:tiny"), *TINY],
                                  marks=pytest.mark.slow),
}


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory) -> str:
    """Shared by the runs of this module: a rerun on the same topology (resume, kill test) skips compilation."""
    return str(tmp_path_factory.mktemp("jax_cache"))


def _argv(command: list[str], workdir: str, data: str) -> list[str]:
    return [a.format(workdir=workdir, data=data) for a in command]


def _run(processes: int, devices: int, argv: list[str], log_dir: str, cache: str) -> subprocess.CompletedProcess:
    result = run_local(processes, devices, argv, log_dir, JAX_COMPILATION_CACHE_DIR=cache)
    assert result.returncode == 0, failure_report(result, log_dir)
    return result


def _assert_same_state(state: dict, reference: dict) -> None:
    """Every array of the train state (parameters, optimiser moments, counters) to 1e-5 (relative above 1)."""
    flat, reference_flat = jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(reference)
    assert len(flat) == len(reference_flat)
    for (path, value), expected in zip(flat, reference_flat):
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_two_processes_end_where_one_ends_and_their_checkpoint_resumes_in_one(command, synthetic, tmp_path,
                                                                              compilation_cache):
    one, two, resumed = (str(tmp_path / name) for name in ("one", "two", "resumed"))
    _run(1, 4, _argv(command, one, synthetic), str(tmp_path / "logs_one"), compilation_cache)
    _run(2, 2, _argv(command, two, synthetic), str(tmp_path / "logs_two"), compilation_cache)
    step, reference = latest_state(one)
    assert step == STEPS and latest_state(two)[0] == STEPS
    _assert_same_state(latest_state(two)[1], reference)
    assert logged_steps(two) == list(range(1, STEPS + 1))  # process 0 alone writes metrics: each step once

    # The 2-process checkpoint of step STEPS - 1 continues in 1 process (4 devices) to the uninterrupted result.
    shutil.copytree(os.path.join(two, "checkpoints", str(STEPS - 1)),
                    os.path.join(resumed, "checkpoints", str(STEPS - 1)))
    result = _run(1, 4, _argv(command, resumed, synthetic), str(tmp_path / "logs_resumed"), compilation_cache)
    assert f"resumed from {resumed}/checkpoints/{STEPS - 1}" in result.stdout
    _assert_same_state(latest_state(resumed)[1], reference)
    assert logged_steps(resumed) == [STEPS]


class _Pair:
    """Two processes of one job started directly (local.sh would kill the survivor itself), logging to files."""

    def __init__(self, argv: list[str], tmp_path, cache: str):
        port = free_port()
        self.processes, self.logs = [], []
        for process in range(2):
            env = job_environment(METAPORTRAIT_COORDINATOR=f"127.0.0.1:{port}", METAPORTRAIT_NUM_PROCESSES="2",
                                  METAPORTRAIT_PROCESS_ID=str(process), JAX_PLATFORMS="cpu",
                                  XLA_FLAGS="--xla_force_host_platform_device_count=2",
                                  METAPORTRAIT_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT),
                                  JAX_COMPILATION_CACHE_DIR=cache, JAX_SHARE_BINARY_BETWEEN_HOSTS="true")
            self.logs.append(str(tmp_path / f"process_{process}.log"))
            with open(self.logs[-1], "w") as log:
                self.processes.append(subprocess.Popen([*CLI.split(), *argv], env=env, stdout=log,
                                                       stderr=subprocess.STDOUT, cwd=REPO))

    def output(self, process: int) -> str:
        with open(self.logs[process]) as f:
            return f.read()[-3000:]

    def wait_for(self, path: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.isdir(path):
            assert time.monotonic() < deadline and all(p.poll() is None for p in self.processes), [
                self.output(i) for i in range(2)]
            time.sleep(0.2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("victim", [1, pytest.param(0, marks=pytest.mark.slow)])
def test_a_killed_process_stops_the_job_with_an_error(victim, synthetic, tmp_path, compilation_cache):
    """kill -9 of one process mid-run: the other exits with an error, after about the heartbeat timeout (or at once
    when the victim is process 0, which hosts the coordination service)."""
    workdir = str(tmp_path / "run")
    argv = _argv(COMMANDS["pretrain-warp"], workdir, synthetic) + ["--config.train.steps=1000"]
    with _Pair(argv, tmp_path, compilation_cache) as pair:
        pair.wait_for(os.path.join(workdir, "checkpoints", "1"))  # mid-run: step 1 done and saved
        pair.processes[victim].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        status = pair.processes[1 - victim].wait(timeout=HEARTBEAT_TIMEOUT + 120)
        elapsed = time.monotonic() - killed
    output = pair.output(1 - victim)
    assert status != 0, output
    assert "JAX distributed service detected fatal errors" in output, output
    assert elapsed < (HEARTBEAT_TIMEOUT + 30 if victim else 30), elapsed


def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(synthetic, tmp_path, compilation_cache):
    workdir = str(tmp_path / "run")
    argv = _argv(COMMANDS["pretrain-warp"], workdir, synthetic) + ["--config.train.steps=1000"]
    with _Pair(argv, tmp_path, compilation_cache) as pair:
        pair.wait_for(os.path.join(workdir, "checkpoints", "1"))
        pair.processes[1].send_signal(signal.SIGTERM)
        statuses = [process.wait(timeout=300) for process in pair.processes]
    assert statuses == [0, 0], [pair.output(i) for i in range(2)]
    saved = sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit())
    assert 1 < saved[-1] < 1000 and saved[-1] == logged_steps(workdir)[-1]
    assert "rerun the same command to resume" in pair.output(0)
