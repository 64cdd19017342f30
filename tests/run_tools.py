"""Running commands in subprocesses and interrupting them at a given training step (shared by resume tests)."""

import json
import os
import subprocess
import time

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"

# Two float64 training runs on different layouts (1 x 4 against 2 x 2 devices, 1 against 8 with FSDP), 3 warp steps:
# 9.1e-15 apart at worst (AMD EPYC; a conv bias before an instance norm, whose true gradient is 0). Adam (eps 1e-8)
# magnifies a round-off difference dg of such a component to lr·dg/eps per step: 3 steps x 2e-5 x 1e8 x 2^-53 =
# 6.7e-13 per unit of the summed terms' magnitude. The tolerance leaves room for sums of ~150 units; a real
# difference (rows on the wrong device, a missing all-reduce) moves weights by ~lr = 2e-5.
FLOAT64_STATE_TOLERANCE = 1e-10


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
    process = subprocess.Popen(command, env=device_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.time() + 600
    while max(logged_steps(workdir), default=0) < at_step and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=300)
    assert "Traceback" not in output, output[-3000:]
    return process.returncode
