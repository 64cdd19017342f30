"""Meta-gradients of one task and of a meta-batch: Reptile, first-order MAML and second-order MAML.

A task is `{"support": batch, "query": batch}`. For parameters θ and θ′ = adapt(θ, support):

    reptile  θ − θ′                          (the official pseudo-gradient; the query set is not used)
    fomaml   ∇L_query(θ′)                    (the adaptation is treated as the identity)
    maml     ∇_θ L_query(adapt(θ, support))  (exact: the gradient flows back through every inner step)

Each is handed to an outer optimiser as a gradient. All are pure functions, so a meta-batch is a `vmap` over tasks,
and under `jit` with the tasks split over a mesh the mean over tasks becomes a cross-device reduction.
"""

from typing import Any

import jax
import optax

from metaportrait_jax.meta.adapt import Batch, LossFn, Params, adapt, tree_mean

ALGORITHMS = ("reptile", "fomaml", "maml")


def check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"meta algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


def task_meta_gradient(algorithm: str, loss_fn: LossFn, params: Params, task: dict[str, Batch], steps: int,
                       inner_optimizer: optax.GradientTransformation, *, remat: bool = False
                       ) -> tuple[Params, dict[str, jax.Array]]:
    """(meta-gradient of one task, metrics): `support_loss_before`/`support_loss_after_inner` (the loss at the first
    and last inner step) and, for the MAML variants, `query_loss` after adaptation."""
    check_algorithm(algorithm)

    def adapted(theta):
        return adapt(loss_fn, theta, task["support"], steps, inner_optimizer, remat=remat)

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


def meta_batch_gradient(algorithm: str, loss_fn: LossFn, params: Params, tasks: dict[str, Batch], steps: int,
                        inner_optimizer: optax.GradientTransformation, *, remat: bool = False
                        ) -> tuple[Params, dict[str, jax.Array]]:
    """Mean meta-gradient and mean metrics over `tasks` (every leaf has a leading task axis `[N, ...]`)."""

    def one(task: dict[str, Any]):
        return task_meta_gradient(algorithm, loss_fn, params, task, steps, inner_optimizer, remat=remat)

    grads, metrics = jax.vmap(one)(tasks)
    return tree_mean(grads), tree_mean(metrics)
