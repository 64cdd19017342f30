"""`metaportrait-jax doctor`: names the backend and versions, and warns when GPU/TPU variables meet a CPU backend."""

import subprocess
import sys

import jax

from metaportrait_jax import api
from metaportrait_jax.cli import main
from run_tools import device_environment

ACCELERATOR_VARIABLES = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "TPU_NAME", "TPU_ACCELERATOR_TYPE",
                         "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES", "TPU_SKIP_MDS_QUERY")


def test_report_names_the_backend_devices_and_versions(capsys):
    report = api.doctor()
    assert report.backend == jax.default_backend() == "cpu"
    assert report.devices == [f"{jax.device_count()} x cpu"]  # conftest's fake CPU devices
    assert report.versions["jax"] == jax.__version__
    assert report.versions["torch"] is not None  # the test extra installs it

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "backend:" in out and " cpu" in out and "jax:" in out and jax.__version__ in out
    assert "XLA_FLAGS:" in out and "--xla_force_host_platform_device_count=8" in out


def _doctor(**variables: str) -> subprocess.CompletedProcess:
    """The console command in a fresh process (a fresh JAX picks its backend) with only `variables` of the
    accelerator variables set."""
    environment = {k: v for k, v in device_environment(1).items() if k not in ACCELERATOR_VARIABLES}
    return subprocess.run([sys.executable, "-m", "metaportrait_jax.cli", "doctor"], env=dict(environment, **variables),
                          capture_output=True, text=True, timeout=300)


def test_gpu_and_tpu_variables_on_the_cpu_backend_warn():
    plain = _doctor()
    assert plain.returncode == 0, plain.stderr
    assert "warning" not in plain.stdout and "1 x cpu" in plain.stdout

    gpu = _doctor(CUDA_VISIBLE_DEVICES="0")
    assert gpu.returncode == 0, gpu.stderr
    assert "warning: CUDA_VISIBLE_DEVICES=0 is set but JAX runs on the cpu backend" in gpu.stdout
    assert "ACCEL=cuda12" in gpu.stdout  # no CUDA plugin on this machine: the warning says how to install one

    hidden = _doctor(CUDA_VISIBLE_DEVICES="", NVIDIA_VISIBLE_DEVICES="void")  # GPUs hidden on purpose
    assert "warning" not in hidden.stdout

    tpu = _doctor(TPU_NAME="my-slice", TPU_ACCELERATOR_TYPE="v4-16")
    assert "warning: TPU_NAME, TPU_ACCELERATOR_TYPE are set but JAX runs on the cpu backend" in tpu.stdout
