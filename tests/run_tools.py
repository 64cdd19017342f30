"""Running commands in subprocesses and interrupting them at a given training step (shared by resume tests)."""

import json
import os
import subprocess
import time

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def xla_flags(devices: int | None) -> str:
    """This environment's XLA_FLAGS (e.g. `--xla_cpu_max_isa=AVX2`, the other instruction-set path) with the fake
    CPU device count set to `devices` (None: left to whoever starts the process, e.g. launch/local.sh)."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    return " ".join(kept + ([f"{DEVICE_COUNT_FLAG}={devices}"] if devices else []))


def device_environment(devices: int = 1, **variables: str) -> dict[str, str]:
    """This environment for a subprocess on `devices` fake CPU devices (1: as a user's machine has)."""
    return dict(os.environ, XLA_FLAGS=xla_flags(devices), **variables)


def logged_steps(workdir: str) -> list[int]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


def start_and_signal(command: list[str], workdir: str, at_step: int, signum: int) -> int:
    process = subprocess.Popen(command, env=device_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while max(logged_steps(workdir), default=0) < at_step and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=300)
    assert "Traceback" not in output, output[-3000:]
    return process.returncode
