"""Meta-gradients of one task and of a meta-batch: Reptile, first-order MAML and second-order MAML.

A task is `{"support": batch, "query": batch}`. For parameters θ and θ′ = adapt(θ, support):

    reptile  θ − θ′                          (the official pseudo-gradient; the query set is not used)
    fomaml   ∇L_query(θ′)                    (the adaptation is treated as the identity)
    maml     ∇_θ L_query(adapt(θ, support))  (exact: the gradient flows back through every inner step)

Each is handed to an outer optimiser as a gradient. All are pure functions, so a meta-batch is a `vmap` over tasks,
and under `jit` with the tasks split over a mesh the mean over tasks becomes a cross-device reduction.

MAML's gradient can also be taken one inner step at a time (`maml_gradient_by_inner_steps`): reverse-mode through
the adaptation written out as K forward steps, the query gradient and K vector-Jacobian products of one step each.
The same numbers as `jax.grad` through `adapt`, but each piece can be its own compiled program: XLA compiles three
small programs where the whole second-order graph of a generator outgrows a 24 GB machine's compile memory.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from metaportrait_jax.meta.adapt import Batch, LossFn, Params, adapt, inner_step, tree_mean

ALGORITHMS = ("reptile", "fomaml", "maml")


def check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"meta algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


def task_meta_gradient(algorithm: str, loss_fn: LossFn, params: Params, task: dict[str, Batch], steps: int,
                       inner_optimizer: optax.GradientTransformation, *, remat: bool = False,
                       unroll: bool = True) -> tuple[Params, dict[str, jax.Array]]:
    """(meta-gradient of one task, metrics): `support_loss_before`/`support_loss_after_inner` (the loss at the first
    and last inner step) and, for the MAML variants, `query_loss` after adaptation. `remat`, `unroll`: `adapt`'s."""
    check_algorithm(algorithm)

    def adapted(theta):
        return adapt(loss_fn, theta, task["support"], steps, inner_optimizer, remat=remat, unroll=unroll)

    if algorithm == "maml":
        def query_loss(theta):
            new, losses = adapted(theta)
            return loss_fn(new, task["query"]), losses

        (query, losses), grad = jax.value_and_grad(query_loss, has_aux=True)(params)
        metrics = {"query_loss": query}
    else:
        new, losses = adapted(params)
        new = jax.lax.stop_gradient(new)
        if algorithm == "reptile":
            grad = jax.tree.map(lambda a, b: a - b, params, new)
            metrics = {}
        else:
            query, grad = jax.value_and_grad(loss_fn)(new, task["query"])
            metrics = {"query_loss": query}
    metrics.update(support_loss_before=losses[0], support_loss_after_inner=losses[-1])
    return grad, metrics


TASK_BATCHING = ("vmap", "map")


def over_tasks(fn: Callable, task_batching: str) -> Callable:
    """`fn` of one task's values -> the same over task rows `[N, ...]`: `vmap` (all tasks in one batched program) or
    `map` (`lax.map`: one task after another, so one task's activations at a time and the same per-task program
    whatever the number of tasks)."""
    if task_batching not in TASK_BATCHING:
        raise ValueError(f"task_batching must be one of {TASK_BATCHING}, got {task_batching!r}")
    if task_batching == "vmap":
        return jax.vmap(fn)
    return lambda *rows: jax.lax.map(lambda row: fn(*row), rows)


def meta_batch_gradient(algorithm: str, loss_fn: LossFn, params: Params, tasks: dict[str, Batch], steps: int,
                        inner_optimizer: optax.GradientTransformation, *, remat: bool = False,
                        unroll: bool = True, task_batching: str = "vmap") -> tuple[Params, dict[str, jax.Array]]:
    """Mean meta-gradient and mean metrics over `tasks` (every leaf has a leading task axis `[N, ...]`), the tasks
    batched by `over_tasks`."""

    def one(task: dict[str, Any]):
        return task_meta_gradient(algorithm, loss_fn, params, task, steps, inner_optimizer, remat=remat,
                                  unroll=unroll)

    grads, metrics = over_tasks(one, task_batching)(tasks)
    return tree_mean(grads), tree_mean(metrics)


def float_leaves(tree: Any) -> list[jax.Array]:
    """The floating-point leaves of `tree` (e.g. an optimiser state's moments, not its integer step count): the
    part of an optimiser state that has a cotangent."""
    return [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]


def with_float_leaves(tree: Any, floats: list[jax.Array]) -> Any:
    """`tree` with its floating-point leaves replaced, in order, by `floats`."""
    leaves, treedef = jax.tree.flatten(tree)
    replacements = iter(floats)
    return treedef.unflatten([next(replacements) if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) else leaf
                              for leaf in leaves])


def inner_step_vjp(loss_fn: LossFn, inner_optimizer: optax.GradientTransformation, params: Params,
                   opt_state: Any, support: Batch, cotangent: tuple[Params, list[jax.Array]]
                   ) -> tuple[Params, list[jax.Array]]:
    """Pulls the cotangent of (params, float leaves of the optimiser state) after one inner step from `params`,
    `opt_state` back to before it: a Hessian-vector product of the support loss, and Adam's own derivatives."""

    def step(theta, floats):
        new, state, _ = inner_step(loss_fn, inner_optimizer, theta, with_float_leaves(opt_state, floats), support)
        return new, float_leaves(state)

    return jax.vjp(step, params, float_leaves(opt_state))[1](cotangent)


def query_value_and_cotangent(loss_fn: LossFn, params: Params, opt_state: Any, query: Batch
                              ) -> tuple[jax.Array, tuple[Params, list[jax.Array]]]:
    """(query loss, its cotangent for (adapted params, float leaves of the optimiser state)): the start of MAML's
    backward pass; the query loss does not depend on the optimiser state, whose cotangent is zero."""
    loss, grad = jax.value_and_grad(loss_fn)(params, query)
    return loss, (grad, [jnp.zeros_like(leaf) for leaf in float_leaves(opt_state)])


def maml_gradient_by_inner_steps(forward: Callable, query: Callable, backward: Callable, params: Params,
                                 opt_state: Any, steps: int) -> tuple[Params, dict[str, jax.Array]]:
    """MAML's meta-gradient and metrics as `task_meta_gradient("maml", ...)` gives them, from three functions a
    caller may compile apart (each with the support or query batch bound):

        forward(θ, state) -> (θ′, state′, support loss)       one inner step (`meta.adapt.inner_step`)
        query(θ, state) -> (loss, cotangent)                  `query_value_and_cotangent`
        backward(θ, state, cotangent) -> cotangent            `inner_step_vjp`

    `opt_state` is `inner_optimizer.init(params)`, whose value must not depend on the parameters' values (true of
    optax's optimisers: their states start at zero); so the gradient is the cotangent of `params` after the last
    backward step. Keeps every step's parameters and optimiser state: the memory of `meta.remat`.
    """
    if steps < 1:
        raise ValueError(f"maml_gradient_by_inner_steps: steps must be at least 1, got {steps}")
    trajectory, losses = [(params, opt_state)], []
    for _ in range(steps):
        theta, state, loss = forward(*trajectory[-1])
        trajectory.append((theta, state))
        losses.append(loss)
    query_loss, cotangent = query(*trajectory.pop())
    for theta, state in reversed(trajectory):
        cotangent = backward(theta, state, cotangent)
    return cotangent[0], {"query_loss": query_loss, "support_loss_before": losses[0],
                          "support_loss_after_inner": losses[-1]}
