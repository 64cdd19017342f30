"""Test helpers for multi-process JAX jobs on this machine: free ports, `launch/local.sh` runs of the CLI, and reading
a run's final training state on any topology."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding

from run_tools import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_SH = os.path.join(REPO, "launch", "local.sh")
CLI = f"{sys.executable} -m metaportrait_jax.cli"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_environment(**variables: str) -> dict[str, str]:
    """This environment without the test process's device count and compilation cache (every process of a job
    must compile alike, tests/conftest.py), plus `variables` (e.g. a compilation cache for one process)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XLA_FLAGS"] = xla_flags(None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    return {**env, **variables}


def run_local(num_processes: int, devices_per_process: int, argv: list[str], log_dir: str, timeout: float = 1800,
              **variables: str) -> subprocess.CompletedProcess:
    """`launch/local.sh num_processes` running `metaportrait-jax argv` on `devices_per_process` fake CPU devices
    each; process 0's output is in the result, the others' in `log_dir`."""
    env = job_environment(METAPORTRAIT_BIN=CLI, DEVICES_PER_PROCESS=str(devices_per_process), LOG_DIR=log_dir,
                          PORT=str(free_port()), **variables)
    return subprocess.run(["bash", LOCAL_SH, str(num_processes), *argv], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def failure_report(result: subprocess.CompletedProcess, log_dir: str) -> str:
    logs = [f"--- {name}\n{open(os.path.join(log_dir, name)).read()[-3000:]}" for name in sorted(os.listdir(log_dir))]
    return "\n".join([f"exit status {result.returncode}", result.stdout[-3000:], result.stderr[-3000:], *logs])


def latest_state(workdir: str) -> tuple[int, dict]:
    """(step, train state as numpy arrays) of the latest checkpoint in `workdir`, whatever topology wrote it."""
    checkpoints = os.path.join(workdir, "checkpoints")
    step = max(int(name) for name in os.listdir(checkpoints) if name.isdigit())
    path = os.path.join(checkpoints, str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    here = SingleDeviceSharding(jax.devices()[0])
    with jax.enable_x64(True):  # a float64 run's state as it was saved (JAX would read float32 without x64)
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                              checkpointer.metadata(path).item_metadata)
        return step, jax.tree.map(np.asarray, checkpointer.restore(path, target))
