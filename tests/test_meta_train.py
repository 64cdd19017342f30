"""Meta-training of the generator: sharded meta-steps equal one device, the SN-folded start gives the SN model's
outputs, a start of another model is refused, personalisation exports an SN-free model (and, slow, resumes exactly),
meta-training starts from the folded model and exports an SN-free one, the adaptation benchmark's protocol."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from metaportrait_jax.config import load_config
from metaportrait_jax.data.pipeline import PipelineSpec, make_dataset, make_iterator
from metaportrait_jax.data.sources import TfdsFrames
from metaportrait_jax.meta.adapt import tree_mean
from metaportrait_jax.eval.adaptation import AdaptationCurves, steps_to_reach, write_report
from metaportrait_jax.models.generator import BATCH_KEYS, Generator, dummy_batch
from metaportrait_jax.train.checkpoint import load_model, load_sn_free_generator, save_model
from metaportrait_jax.train.meta_step import MetaTrainer
from metaportrait_jax.train.sharding import batch_sharding, global_batch, make_mesh, tree_sharding
from metaportrait_jax.train.start import jit_init
from metaportrait_jax.train.step import Trainer, cast_floating
from run_tools import device_environment, logged_steps, start_and_signal
from tiny_models import random_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ID_DIM = 64


def _meta_config(*overrides: str):
    return load_config(os.path.join(REPO, "configs", "meta_train.py:tiny"),
                       [f"model.id_dim={ID_DIM}", "meta.support=2", "meta.query=2", *overrides])


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """A (random-weight) full-stage checkpoint with spectral norm, as `train` exports it: after one training-mode
    forward its spectral-norm vectors estimate each kernel's largest singular value, as a trained model's do."""
    config = load_config(os.path.join(REPO, "configs", "pretrain_full.py:tiny"), [f"model.id_dim={ID_DIM}"])
    variables = random_variables(config.model, seed=3)
    power_iteration = jax.jit(lambda v, batch: Generator(config.model).apply(v, batch, train=True,
                                                                             mutable=["spectral"])[1])
    variables.update(power_iteration(variables, dummy_batch(config.model)))
    directory = str(tmp_path_factory.mktemp("pretrained") / "export")
    save_model(directory, config, jax.device_get(variables), network="generator")
    return directory


def _tasks(synthetic, count: int):
    spec = PipelineSpec("episodes", 8, support=2, query=2)
    iterator = make_iterator(make_dataset(TfdsFrames(synthetic, "train"), spec), spec)
    return [next(iterator) for _ in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, task_batching", [
    ("reptile", "vmap"), ("fomaml", "vmap"), ("fomaml", "map"), ("maml", "map")])
def test_meta_step_on_eight_devices_equals_one_device(synthetic, perceptual, algorithm, task_batching):
    # In float64. In float32 the two layouts (8 tasks batched on one device, one task per device) round differently,
    # and at this random-init generator the query gradient jumps with round-off-sized changes of the adapted
    # weights: FOMAML's meta-gradient norms came 1e-3 apart (vmap; 1.6e-5 with lax.map), though each of the 8 tasks
    # computed alone and averaged gave the 8-device value and the vmapped program fed the same adapted weights
    # agreed with it to 6e-7. Float64 leaves that magnification ~1e-16 round-off to work on, so what is compared is
    # the sharding: which task each device gets and how the meta-gradient is averaged.
    # Adam moves a weight by about ±lr on its first steps whatever its gradient's size (Reptile normalises twice:
    # inner and outer Adam), so a weight whose gradient is round-off alone steps either way; eps_root=1e-6 keeps
    # Adam from blowing gradients below ~1e-3 up to ±lr.
    pairs = 1 if algorithm == "maml" else 2  # MAML's 8 float64 tasks of 2 + 2 pairs would crowd 24 GB
    config = _meta_config("meta.tasks=8", f"meta.algorithm={algorithm!r}", f"meta.task_batching={task_batching!r}",
                          "train.adam_eps_root=1e-6", "train.compute_dtype='float64'", f"meta.support={pairs}",
                          f"meta.query={pairs}")
    results = []
    with jax.enable_x64(True):
        trainer = MetaTrainer(config, perceptual[0])
        tasks = [dict(task, support=jax.tree.map(lambda x: x[:, :pairs], task["support"]),
                      query=jax.tree.map(lambda x: x[:, :pairs], task["query"]))
                 for task in cast_floating(_tasks(synthetic, 2), np.float64)]
        for mesh in (make_mesh(devices=jax.devices()[:1]), make_mesh()):
            def init(rng):
                return cast_floating(trainer.init_state(rng, perceptual[1]), np.float64)

            sharding = tree_sharding(jax.eval_shape(init, jax.random.key(0)), mesh)
            state = jax.jit(init, out_shardings=sharding)(jax.random.key(0))
            start = jax.device_get(state.generator["params"])
            step = trainer.compile_step(sharding, batch_sharding(mesh), None)
            history = []
            for batch in tasks:
                with jax.set_mesh(mesh):  # as train.loop runs it: each device adapts its own tasks
                    state, metrics = step(state, global_batch(batch, mesh))
                history.append({k: float(v) for k, v in metrics.items()})
            results.append((jax.device_get(state.generator["params"]), history))
    (one, one_history), (eight, eight_history) = results
    assert len(jax.devices()) == 8
    assert all(x.dtype == np.float64 for x in jax.tree.leaves(one) + jax.tree.leaves(eight))
    for a, b in zip(one_history, eight_history):
        for key in ("support_loss_before", "support_loss_after_inner", "meta_grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-9 * abs(a[key]), (key, a[key], b[key])
    assert one_history[0]["finite"] == 1.0 and eight_history[-1]["skipped"] == 0
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(one)[0], jax.tree.leaves(eight)):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12, err_msg=jax.tree_util.keystr(path))
    assert any(np.any(a != s) for a, s in zip(jax.tree.leaves(one), jax.tree.leaves(start)))  # the steps moved it


@pytest.mark.slow
def test_maml_step_by_inner_steps_on_the_generator(synthetic, perceptual):
    # The generator's whole second-order graph does not compile on a 24 GB machine, so there is no one-program
    # reference here (tests/test_meta.py checks the decomposition against jax.grad and finite differences). This
    # checks its plumbing through the trainer: with inner learning rate 0 the adaptation is the identity, so MAML's
    # meta-gradient is the query loss's gradient at θ, and the step is one outer Adam step with it.
    config = _meta_config("meta.algorithm='maml'", "train.adam_eps_root=1e-6", "meta.inner_learning_rate=0.0")
    trainer = MetaTrainer(config, perceptual[0])
    tasks = jax.tree.map(lambda x: x[:2], _tasks(synthetic, 1)[0])
    state = jit_init(trainer.init_state)(jax.random.key(0), perceptual[1])
    params = jax.device_get(state.generator["params"])

    @jax.jit
    def expected(state, tasks):
        losses, grads = jax.vmap(lambda q: jax.value_and_grad(trainer.task_loss)(state.generator["params"], state, q))(
            tasks["query"])
        supports = jax.vmap(lambda s: trainer.task_loss(state.generator["params"], state, s))(tasks["support"])
        grad = tree_mean(grads)
        updates = trainer.outer_tx.update(grad, state.generator_opt, state.generator["params"])[0]
        return optax.apply_updates(state.generator["params"], updates), optax.tree.norm(grad), losses, supports

    new_params, norm, query_losses, support_losses = jax.device_get(expected(state, tasks))
    state, metrics = trainer.compile_step()(state, tasks)
    assert float(metrics["meta_grad_norm"]) == pytest.approx(float(norm), rel=1e-5)
    assert float(metrics["query_loss"]) == pytest.approx(float(np.mean(query_losses)), rel=1e-5)
    for key in ("support_loss_before", "support_loss_after_inner"):
        assert float(metrics[key]) == pytest.approx(float(np.mean(support_losses)), rel=1e-5), key
    for a, b in zip(jax.tree.leaves(state.generator["params"]), jax.tree.leaves(new_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert any(np.any(np.asarray(a) != b) for a, b in zip(jax.tree.leaves(state.generator["params"]),
                                                          jax.tree.leaves(params)))


def test_meta_config_errors_name_the_field(perceptual):
    with pytest.raises(ValueError, match="meta.algorithm must be one of"):
        MetaTrainer(_meta_config("meta.algorithm='mamI'"), perceptual[0])
    with pytest.raises(ValueError, match="train.adam_eps_root > 0"):
        MetaTrainer(_meta_config("meta.algorithm='maml'"), perceptual[0])
    with pytest.raises(ValueError, match="model.use_sn=False"):
        MetaTrainer(_meta_config("model.use_sn=True"), perceptual[0])
    with pytest.raises(ValueError, match="meta.task_batching must be one of"):
        MetaTrainer(_meta_config("meta.task_batching='scan'"), perceptual[0])
    with pytest.raises(ValueError, match="meta.maml_programs must be one of"):
        MetaTrainer(_meta_config("meta.maml_programs='two'"), perceptual[0])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "metaportrait_jax.cli", *args]


def test_the_folded_start_gives_the_spectral_norm_models_outputs(synthetic, pretrained):
    sn_config, sn_variables, _ = load_model(pretrained)
    config, folded = load_sn_free_generator(pretrained)
    assert not config.model.use_sn and "spectral" not in folded
    spec = PipelineSpec("pairs", 2)
    batch = next(make_iterator(make_dataset(TfdsFrames(synthetic, "test"), spec), spec))
    inputs = {k: batch[k] for k in BATCH_KEYS}
    with_sn = jax.jit(Generator(sn_config.model).apply)(sn_variables, inputs)["prediction"]
    without = jax.jit(Generator(config.model).apply)(folded, inputs)["prediction"]
    # float32 round-off of dividing by sigma before rather than after the convolutions, through the random-weight
    # tiny generator, measured at most 4.6e-5 (AVX-512 and AVX2 paths); a wrong sigma errs by orders more
    np.testing.assert_allclose(without, with_sn, atol=1e-4)


# The fast suite checks the same through the ANIL example's meta-training from the shipped spectral-norm start
# (tests/test_examples.py), whose compile it needs anyway.
@pytest.mark.slow
def test_meta_training_starts_from_the_folded_model_and_exports_without_spectral_norm(synthetic, pretrained,
                                                                                     tmp_path):
    """One outer step (a rolled inner loop: the cheaper compile) from the spectral-norm model moves its folded
    weights, each by at most about the learning rate (Adam), and exports an SN-free generator alone."""
    workdir = str(tmp_path / "meta")
    subprocess.run(_cli("meta-train", "--config", os.path.join(REPO, "configs", "meta_train.py:tiny"), "--workdir",
                        workdir, "--no-progress", "--config.data.source=tfds", f"--config.data.path={synthetic}",
                        f"--config.init_from={pretrained}", f"--config.model.id_dim={ID_DIM}",
                        "--config.train.steps=1", "--config.meta.tasks=1", "--config.meta.support=2",
                        "--config.meta.query=2", "--config.meta.unroll_inner_loop=False",
                        "--config.train.image_every=0"), env=device_environment(), check=True, capture_output=True)
    config, variables, discriminator = load_model(os.path.join(workdir, "export"))
    assert not config.model.use_sn and "spectral" not in variables and discriminator is None
    _, folded = load_sn_free_generator(pretrained)
    moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(variables))]
    assert 0 < max(moved) <= config.train.learning_rate * 1.01, (max(moved), config.train.learning_rate)


def test_meta_train_refuses_a_start_of_another_model_naming_the_fields(synthetic, pretrained, tmp_path):
    result = subprocess.run(_cli("meta-train", "--config", os.path.join(REPO, "configs", "meta_train.py:tiny"),
                                 "--workdir", str(tmp_path / "bad"), "--config.data.source=tfds",
                                 f"--config.data.path={synthetic}", f"--config.init_from={pretrained}",
                                 f"--config.model.id_dim={ID_DIM}", "--config.model.spade.conv_dim=4"),
                            env=device_environment(), capture_output=True, text=True)
    assert result.returncode == 2 and "spade.conv_dim: 8 vs 4" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def _personalize(synthetic, checkpoint, output, steps):
    return _cli("personalize", "--checkpoint", checkpoint, "--data", synthetic, "--person",
                str(int(TfdsFrames(synthetic, "test").clips.persons()[0])), "--clips", "0", "--steps", str(steps),
                "--output", output, "--batch-size", "2", "--no-progress")


@pytest.mark.minutes
def test_personalize_exports_an_sn_free_model_of_the_steps_asked(synthetic, pretrained, tmp_path):
    output = str(tmp_path / "personalised")
    done = subprocess.run(_personalize(synthetic, pretrained, output, 2), env=device_environment(), check=True,
                          capture_output=True, text=True)
    assert "personalised 2 steps" in done.stdout
    config, variables, discriminator = load_model(output)
    assert not config.model.use_sn and "spectral" not in variables and discriminator is None
    assert logged_steps(os.path.join(output, "run")) == [1, 2]


# Personalising runs the training loop whose resuming tests/test_train.py checks after SIGTERM and SIGKILL: slow suite.
@pytest.mark.slow
def test_personalization_resumes_after_interruption_to_the_uninterrupted_result(synthetic, pretrained, tmp_path):
    steps = 10  # signalled at step 2: room for a slow poll of the log on a busy machine
    straight = str(tmp_path / "straight")
    done = subprocess.run(_personalize(synthetic, pretrained, straight, steps), env=device_environment(), check=True,
                          capture_output=True, text=True)
    assert f"personalised {steps} steps" in done.stdout
    interrupted = str(tmp_path / "interrupted")
    command = _personalize(synthetic, pretrained, interrupted, steps)
    assert start_and_signal(command, os.path.join(interrupted, "run"), 2, signal.SIGTERM) == 0
    assert not os.path.exists(os.path.join(interrupted, "config.json"))  # no half-trained model is exported
    subprocess.run(command, env=device_environment(), check=True, capture_output=True)
    _, ours, _ = load_model(interrupted)
    _, reference, _ = load_model(straight)
    assert not load_model(interrupted)[0].model.use_sn
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sorted(set(logged_steps(os.path.join(interrupted, "run")))) == list(range(1, steps + 1))


@pytest.mark.parametrize("extra, message", [
    (["--seconds", "5"], "exactly one of --steps N or --seconds S"),
    (["--person", "999999"], "no person 999999"),
    (["--clips", "7"], "asked for [7]"),
])
def test_personalize_bad_arguments_give_one_line_errors(synthetic, pretrained, tmp_path, extra, message):
    command = _personalize(synthetic, pretrained, str(tmp_path / "out"), 2)
    for flag in ("--person", "--clips"):
        if flag in extra:
            index = command.index(flag)
            del command[index:index + 2]
    result = subprocess.run(command + extra, env=device_environment(), capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.minutes
def test_adaptation_curves_protocol_and_report(synthetic, pretrained, tmp_path):
    start = jax.device_put(load_sn_free_generator(pretrained)[1])  # device arrays: each curve must leave them intact
    model = load_model(pretrained)[0].model
    model.use_sn = False
    curves = AdaptationCurves(model, TfdsFrames(synthetic, "test"), eval_steps=(0, 1, 3), batch_size=2,
                              learning_rate=1e-3, frames_per_eval=4)
    persons = curves.persons()[:1]
    results, personalised = curves.run({"pretrained": start, "copy": start}, persons)
    assert set(personalised["copy"]) == set(persons)
    curve = results["pretrained"]["mean"]
    assert [row["step"] for row in curve] == [0, 1, 3] and np.isnan(curve[0]["loss"])
    assert all(np.isfinite(row["lpips"]) and row["lpips"] > 0 and np.isfinite(row["psnr"]) for row in curve)
    def without_time(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    np.testing.assert_equal(without_time(results["copy"]["mean"]), without_time(curve))  # deterministic (NaN == NaN)
    assert curve[-1]["lpips"] != curve[0]["lpips"]  # the steps changed the model
    paths = write_report(results, "pretrained", str(tmp_path / "report"))
    assert all(os.path.getsize(p) > 0 for p in paths.values())
    assert steps_to_reach([{"step": 0, "lpips": 0.5}, {"step": 5, "lpips": 0.2}], 0.3) == 5
    assert steps_to_reach([{"step": 0, "lpips": 0.5}], 0.3) is None
