"""Running commands in subprocesses and interrupting them at a given training step (shared by resume tests)."""

import json
import os
import subprocess
import time


def logged_steps(workdir: str) -> list[int]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


def start_and_signal(command: list[str], workdir: str, at_step: int, signum: int) -> int:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while max(logged_steps(workdir), default=0) < at_step and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=300)
    assert "Traceback" not in output, output[-3000:]
    return process.returncode
