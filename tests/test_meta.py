"""Meta-gradients: MAML against finite differences, FOMAML = MAML without curvature, Reptile = lr × gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
import pytest

from metaportrait_jax.meta.adapt import adapt, inner_step
from metaportrait_jax.meta.algorithms import (inner_step_vjp, maml_gradient_by_inner_steps, meta_batch_gradient,
                                              query_value_and_cotangent, task_meta_gradient)


def _mlp_loss(params, batch):
    hidden = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    return jnp.mean((hidden @ params["w2"] - batch["y"]) ** 2)


def _mlp_task(seed: int, dtype=jnp.float64):
    keys = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(keys[0], (6, 3), dtype)
    q = jax.random.normal(keys[1], (5, 3), dtype)
    return {"support": {"x": x, "y": jnp.sin(x[:, :1])}, "query": {"x": q, "y": jnp.sin(q[:, :1])}}


def _mlp_params(dtype=jnp.float64):
    keys = jax.random.split(jax.random.key(0), 3)
    return {"w1": jax.random.normal(keys[0], (3, 4), dtype), "b1": 0.1 * jax.random.normal(keys[1], (4,), dtype),
            "w2": jax.random.normal(keys[2], (4, 1), dtype)}


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_maml_meta_gradient_matches_finite_differences(inner):
    with jax.enable_x64(True):
        params, task = _mlp_params(), _mlp_task(1)
        optimizer = optax.sgd(0.3) if inner == "sgd" else optax.adam(0.05, eps_root=1e-16)

        def objective(theta):
            return _mlp_loss(adapt(_mlp_loss, theta, task["support"], 3, optimizer)[0], task["query"])

        grad, metrics = task_meta_gradient("maml", _mlp_loss, params, task, 3, optimizer)
        grad_remat, _ = task_meta_gradient("maml", _mlp_loss, params, task, 3, optimizer, remat=True)
        assert float(metrics["query_loss"]) == pytest.approx(float(objective(params)), rel=1e-12)
        flat, unravel = ravel_pytree(params)
        eps = 1e-6
        numeric = np.array([(objective(unravel(flat + eps * e)) - objective(unravel(flat - eps * e))) / (2 * eps)
                            for e in np.eye(flat.size)])
        analytic = np.asarray(ravel_pytree(grad)[0])
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(np.asarray(ravel_pytree(grad_remat)[0]), analytic, rtol=1e-12)
        # one inner step at a time, each piece its own compiled program: the same gradient and metrics
        stepwise, stepwise_metrics = maml_gradient_by_inner_steps(
            jax.jit(lambda p, s: inner_step(_mlp_loss, optimizer, p, s, task["support"])),
            jax.jit(lambda p, s: query_value_and_cotangent(_mlp_loss, p, s, task["query"])),
            jax.jit(lambda p, s, c: inner_step_vjp(_mlp_loss, optimizer, p, s, task["support"], c)),
            params, optimizer.init(params), 3)
        np.testing.assert_allclose(np.asarray(ravel_pytree(stepwise)[0]), analytic, rtol=1e-12)
        for key, value in metrics.items():
            assert float(stepwise_metrics[key]) == pytest.approx(float(value), rel=1e-12), key
        # the first-order estimate differs here: the MLP's loss has curvature
        first_order, _ = task_meta_gradient("fomaml", _mlp_loss, params, task, 3, optimizer)
        assert np.max(np.abs(np.asarray(ravel_pytree(first_order)[0]) - analytic)) > 1e-3


@pytest.mark.parametrize("inner", [optax.sgd(0.1), optax.adam(0.01, eps_root=1e-16)])
def test_fomaml_equals_maml_on_a_linear_model(inner):
    # A loss linear in the parameters has a constant gradient: the inner steps shift θ by an amount that does not
    # depend on θ, so d adapt(θ) / dθ = I and the second-order term vanishes.
    def linear_loss(params, batch):
        return jnp.mean(batch["x"] @ params["w"] + params["b"])

    params = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array(0.3)}
    tasks = {"support": {"x": jax.random.normal(jax.random.key(1), (3, 4, 3))},
             "query": {"x": jax.random.normal(jax.random.key(2), (3, 5, 3))}}
    maml, _ = meta_batch_gradient("maml", linear_loss, params, tasks, 4, inner)
    fomaml, _ = meta_batch_gradient("fomaml", linear_loss, params, tasks, 4, inner)
    for a, b in zip(jax.tree.leaves(maml), jax.tree.leaves(fomaml)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    expected_w = jnp.mean(jnp.mean(tasks["query"]["x"], axis=1), axis=0)
    np.testing.assert_allclose(maml["w"], expected_w, rtol=1e-6)


def test_reptile_with_one_sgd_step_is_lr_times_the_support_gradient():
    params, task = _mlp_params(jnp.float32), _mlp_task(2, jnp.float32)
    lr = 0.05
    grad, metrics = task_meta_gradient("reptile", _mlp_loss, params, task, 1, optax.sgd(lr))
    expected = jax.grad(_mlp_loss)(params, task["support"])
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, lr * b, rtol=1e-5, atol=1e-7)
    assert "query_loss" not in metrics
    assert float(metrics["support_loss_before"]) == pytest.approx(float(_mlp_loss(params, task["support"])))


@pytest.mark.parametrize("task_batching", ["vmap", "map"])
def test_meta_batch_gradient_is_the_mean_over_tasks(task_batching):
    params = _mlp_params(jnp.float32)
    tasks = [_mlp_task(s, jnp.float32) for s in (3, 4, 5)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *tasks)
    optimizer = optax.adam(0.01)
    batch, metrics = meta_batch_gradient("fomaml", _mlp_loss, params, stacked, 2, optimizer,
                                         task_batching=task_batching)
    each = [task_meta_gradient("fomaml", _mlp_loss, params, t, 2, optimizer) for t in tasks]
    for leaf, *per_task in zip(jax.tree.leaves(batch), *(jax.tree.leaves(g) for g, _ in each)):
        np.testing.assert_allclose(leaf, np.mean(per_task, axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["query_loss"], np.mean([float(m["query_loss"]) for _, m in each]), rtol=1e-5)


def test_adaptation_lowers_the_support_loss_and_rejects_bad_arguments():
    params, task = _mlp_params(jnp.float32), _mlp_task(6, jnp.float32)
    adapted, losses = adapt(_mlp_loss, params, task["support"], 20, optax.adam(0.05))
    assert losses.shape == (20,) and float(_mlp_loss(adapted, task["support"])) < 0.5 * float(losses[0])
    with pytest.raises(ValueError, match="steps must be at least 1"):
        adapt(_mlp_loss, params, task["support"], 0, optax.sgd(0.1))
    with pytest.raises(ValueError, match="meta algorithm must be one of"):
        task_meta_gradient("maml2", _mlp_loss, params, task, 1, optax.sgd(0.1))
    with pytest.raises(ValueError, match="task_batching must be one of"):
        meta_batch_gradient("fomaml", _mlp_loss, params, jax.tree.map(lambda x: x[None], task), 1, optax.sgd(0.1),
                            task_batching="pmap")
