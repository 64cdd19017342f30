"""Training: the loss falls, non-finite steps are skipped, FSDP splits the large parameters, the fixed-order
reduction equals the all-reduce, kill / preemption and resume are exact, warp weights seed the full stage, bf16
compute runs. (Steps on other device layouts equal one device's: tests/test_multihost.py.)"""

import os
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaportrait_jax.config import ConfigError, load_config
from metaportrait_jax.data.pipeline import PipelineSpec, make_dataset, make_iterator
from metaportrait_jax.data.sources import TfdsFrames
from metaportrait_jax.train.checkpoint import load_model, read_checkpoint_config, save_model
from metaportrait_jax.train.start import init_from_variables, jit_init
from metaportrait_jax.train.sharding import batch_sharding, global_batch, make_mesh, tree_sharding
from metaportrait_jax.train.step import WARP_MODULES, Trainer, TrainState
from run_tools import device_environment, logged_steps, start_and_signal
from tiny_models import random_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ID_DIM = 64
# Two float64 computations of one quantity that differ only in summation order and layout: float32's measured spread
# (2.9e-6 / 1.9e-4 relative, see the fixed-order test) scaled by float64's unit round-off against float32's (2^-29).
FLOAT64_AGREEMENT = 1e-9


def _config(stage: str, *overrides: str):
    return load_config(os.path.join(REPO, "configs", f"pretrain_{stage}.py:tiny"),
                       [f"model.id_dim={ID_DIM}", *overrides])


def _batches(synthetic, count: int, batch_size: int = 8):
    frames = TfdsFrames(synthetic, "train")
    spec = PipelineSpec("pairs", batch_size, source="random")
    iterator = make_iterator(make_dataset(frames, spec), spec)
    return [next(iterator) for _ in range(count)]


def test_fsdp_shards_the_large_parameters_and_replicates_the_small(perceptual):
    """The FSDP rule on the warp stage's state (shapes only): with fsdp=2 of 8 devices the large hourglass kernels
    are split over the `fsdp` axis, small arrays stay whole. (Steps on such a layout: tests/test_multihost.py.)"""
    trainer = Trainer(_config("warp"), perceptual[0])
    abstract = jax.eval_shape(trainer.init_state, jax.random.key(0), perceptual[1])
    sharding = tree_sharding(abstract, make_mesh(fsdp=2))
    hourglass = sharding.generator["params"]["dense_motion_network"]["hourglass"]
    split = [s for s in jax.tree.leaves(hourglass) if not s.is_fully_replicated]
    assert split and all("fsdp" in s.spec for s in split)
    assert sharding.step.is_fully_replicated


@pytest.mark.minutes
def test_fixed_order_reduction_sums_gathered_gradients_without_an_all_reduce(synthetic, perceptual):
    """`train.gradient_reduction='fixed_order'` gathers the per-device gradients and sums them in device order on every
    device: no all-reduce (whose order depends on the process topology, tests/test_multihost.py) is left in the step,
    and it computes what the default computes.

    Compared in float64: in float32 the two layouts round differently (one example per device against 8 batched in
    one convolution), and the random-init full-stage generator magnifies that through its depth: the generator's
    gradient norm came 2.9e-6 apart on an AMD EPYC and 1.9e-4 on an Intel Xeon, mostly in the SPADE decoder's
    kernels (1.4e-4 of the leaf's norm), while one layout fed the batch reversed agreed to 4e-10. Float64 also
    showed what float32 hid: the eye/mouth losses' 1e-6 was added to each device's share of the mask pixels, so
    the loss depended on the device count (1e-8 relative here; losses.masked_box_loss)."""
    batch = _batches(synthetic, 1)[0]
    results = {}
    with jax.enable_x64(True):
        trainers = {reduction: Trainer(_config("full", f"train.gradient_reduction={reduction!r}",
                                               "train.compute_dtype='float64'"), perceptual[0])
                    for reduction in ("fixed_order", "all_reduce")}
        initial = jax.device_get(jit_init(trainers["all_reduce"].init_state)(
            jax.random.key(0), perceptual[1], None, random_variables(trainers["all_reduce"].config.model)))
        for reduction, devices in (("fixed_order", jax.devices()), ("all_reduce", jax.devices()[:1])):
            mesh = make_mesh(devices=devices)
            trainer, sharding = trainers[reduction], tree_sharding(initial, mesh)
            state = jax.device_put(initial, sharding)
            with jax.set_mesh(mesh):
                step = jax.jit(trainer.step, in_shardings=(sharding, batch_sharding(mesh)),
                               out_shardings=(sharding, None)).lower(state, global_batch(batch, mesh)).compile()
                results[reduction] = {k: float(v) for k, v in step(state, global_batch(batch, mesh))[1].items()}
            if reduction == "fixed_order":
                program = step.as_text()
                assert "all-reduce" not in program and "all-gather" in program
    fixed, default = results["fixed_order"], results["all_reduce"]
    for key in ("generator_loss", "generator_grad_norm", "discriminator_loss", "discriminator_grad_norm"):
        assert abs(fixed[key] - default[key]) <= FLOAT64_AGREEMENT * abs(default[key]), (key, fixed[key], default[key])
    with pytest.raises(ConfigError, match="gradient_reduction must be one of"):
        Trainer(_config("warp", "train.gradient_reduction=psum"), perceptual[0])


def test_compute_dtype_errors_name_the_field(perceptual):
    with pytest.raises(ConfigError, match="train.compute_dtype must be one of .* got 'float16'"):
        Trainer(_config("warp", "train.compute_dtype='float16'"), perceptual[0])
    with pytest.raises(ConfigError, match="needs JAX_ENABLE_X64=1"):
        Trainer(_config("warp", "train.compute_dtype='float64'"), perceptual[0])
    with jax.enable_x64(True):
        assert Trainer(_config("warp", "train.compute_dtype='float64'"), perceptual[0]).loss_dtype == jnp.float64


def test_full_stage_takes_the_warp_networks_from_a_warp_checkpoint(synthetic, perceptual, tmp_path):
    warp = _config("warp")
    save_model(str(tmp_path / "warp"), warp, random_variables(warp.model, seed=7), network="generator")
    full = Trainer(_config("full", f"init_from={str(tmp_path / 'warp')!r}"), perceptual[0])
    fresh = TrainState(step=np.int32(0), generator=random_variables(full.config.model, seed=8), discriminator={},
                       generator_opt=None, discriminator_opt=None, perceptual={}, skipped=np.int32(0))
    state = full.merge(fresh, init_from_variables(full.config, "generator"))
    _, stored, _ = load_model(str(tmp_path / "warp"))
    for name, sub in state.generator["params"].items():
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(sub), jax.tree.leaves(stored["params"][name])))
        assert same == (name in WARP_MODULES), name


def test_bf16_compute_gives_finite_losses_close_to_fp32(synthetic, perceptual):
    batch = _batches(synthetic, 1, 2)[0]
    losses, state = {}, None
    for dtype in ("float32", "bfloat16"):
        trainer = Trainer(_config("warp", f"train.compute_dtype={dtype!r}"), perceptual[0])
        if state is None:  # one start for both: the state is float32 either way
            state = jit_init(trainer.init_state)(jax.random.key(0), perceptual[1], None,
                                                random_variables(trainer.config.model))
        new_state, metrics = jax.jit(trainer.step)(state, jax.tree.map(jnp.asarray, batch))
        losses[dtype] = float(metrics["generator_loss"])
        assert new_state.generator["params"]["ladder_network"]["fc"]["kernel"].dtype == jnp.float32
    assert np.isfinite(losses["bfloat16"])
    assert abs(losses["bfloat16"] - losses["float32"]) < 0.05 * losses["float32"]


def _train_command(data: str, workdir: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "metaportrait_jax.cli", "train", "--config",
            os.path.join(REPO, "configs", "pretrain_warp.py:tiny"), "--workdir", workdir, "--no-progress",
            "--config.data.source=tfds", f"--config.data.path={data}",
            f"--config.model.id_dim={ID_DIM}", "--config.train.batch_size=2", f"--config.train.steps={steps}",
            "--config.train.checkpoint_every=1", "--config.train.log_every=1", "--config.train.image_every=0",
            "--config.data.pair_source=random"]


@pytest.mark.minutes
def test_killed_and_preempted_runs_resume_to_the_uninterrupted_result(synthetic, tmp_path):
    steps = 6
    env = device_environment()
    straight = str(tmp_path / "straight")
    subprocess.run(_train_command(synthetic, straight, steps), env=env, check=True, capture_output=True)

    interrupted = str(tmp_path / "interrupted")
    command = _train_command(synthetic, interrupted, steps)
    rng = np.random.default_rng()
    assert start_and_signal(command, interrupted, int(rng.integers(1, 3)), signal.SIGTERM) == 0  # saves, exits
    assert not os.path.exists(os.path.join(interrupted, "export"))  # no half-trained model is exported
    assert start_and_signal(command, interrupted, int(rng.integers(3, 5)), signal.SIGKILL) == -signal.SIGKILL
    # finished short of `steps`, then extended: the longer run's model replaces the export, the old one is kept
    subprocess.run(_train_command(synthetic, interrupted, steps - 1), env=env, check=True, capture_output=True)
    subprocess.run(command, env=env, check=True, capture_output=True)
    assert read_checkpoint_config(os.path.join(interrupted, f"export.step{steps - 1}")).train.steps == steps - 1

    _, ours, _ = load_model(os.path.join(interrupted, "export"))
    _, reference, _ = load_model(os.path.join(straight, "export"))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sorted(set(logged_steps(interrupted))) == list(range(1, steps + 1))


def test_loss_falls_on_a_tiny_synthetic_run_and_nan_steps_are_skipped(synthetic, perceptual):
    trainer = Trainer(_config("warp", "train.learning_rate=2e-3"), perceptual[0])
    frames = TfdsFrames(synthetic, "train")
    spec = PipelineSpec("pairs", 4, source="random")
    iterator = make_iterator(make_dataset(frames, spec), spec)
    state = jit_init(trainer.init_state)(jax.random.key(0), perceptual[1])
    step = jax.jit(trainer.step, donate_argnums=0)
    losses = []
    for _ in range(24):
        state, metrics = step(state, jax.tree.map(jnp.asarray, next(iterator)))
        losses.append(float(metrics["warp_perceptual"]))
    assert np.mean(losses[-6:]) < 0.9 * np.mean(losses[:6]), losses

    # A step whose loss is not finite changes nothing but the step and skip counters.
    batch = next(iterator)
    before = jax.device_get((state.generator, state.generator_opt))
    state, metrics = step(state, jax.tree.map(jnp.asarray, dict(batch, source=np.full_like(batch["source"], np.nan))))
    assert int(state.skipped) == 1 and int(state.step) == 25 and float(metrics["finite"]) == 0.0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get((state.generator, state.generator_opt)))):
        np.testing.assert_array_equal(a, b)


class TinyFaceEncoder(nn.Module):
    """A stand-in identity encoder: any module mapping images to [B, id_dim] plugs in."""

    @nn.compact
    def __call__(self, images):
        return nn.Dense(ID_DIM)(jnp.mean(nn.Conv(8, (3, 3))(images), axis=(1, 2)))


@pytest.mark.minutes
def test_identity_loss_uses_the_pluggable_encoder(synthetic, perceptual):
    encoder = TinyFaceEncoder()
    encoder_variables = encoder.init(jax.random.key(1), jnp.zeros((1, 64, 64, 3)))
    config = _config("full", "train.loss.identity=20.0", "train.loss.generator_gan=0.0")
    with pytest.raises(ValueError, match="needs an identity encoder"):
        Trainer(config, perceptual[0])
    trainer = Trainer(config, perceptual[0], encoder)
    state = jit_init(trainer.init_state)(jax.random.key(0), perceptual[1], encoder_variables,
                                        random_variables(config.model))
    batch = jax.tree.map(jnp.asarray, _batches(synthetic, 1, 2)[0])

    def identity_loss(params, state, batch):
        _, (named, out, _) = trainer.generator_losses(params, state, batch)
        return named["identity"], out["prediction"]

    (loss, prediction), grads = jax.jit(jax.value_and_grad(identity_loss, has_aux=True))(state.generator["params"],
                                                                                        state, batch)
    embedding = encoder.apply(encoder_variables, prediction)
    cosine = jnp.sum(embedding * batch["source_id"], -1) / (
        jnp.linalg.norm(embedding, axis=-1) * jnp.linalg.norm(batch["source_id"], axis=-1))
    np.testing.assert_allclose(float(loss), 20.0 * float(jnp.mean(1 - cosine)), rtol=1e-5)
    assert float(optax.tree.norm(grads["SPDAE_G"])) > 0
