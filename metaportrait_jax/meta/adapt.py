"""The inner loop of meta-learning and of personalisation, as a pure function of the parameters.

`loss_fn(params, batch) -> scalar` is any differentiable loss; `inner_optimizer` any optax transformation, started
fresh for every adaptation (as the official code builds new inner Adams per task). Every inner step sees the whole
support batch (the official default: one support set reused at each of the `inner_update_steps`).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

Params = Any
Batch = Any
LossFn = Callable[[Params, Batch], jax.Array]


def adapt(loss_fn: LossFn, params: Params, support: Batch, steps: int,
          inner_optimizer: optax.GradientTransformation, *, remat: bool = False,
          unroll: int | bool = True) -> tuple[Params, jax.Array]:
    """`steps` optimiser steps on `support` from `params`: returns (adapted params, support loss before each step
    `[steps]`).

    The loop is a `jax.lax.scan`, so it is differentiable end to end: `jax.grad` of a function of the adapted
    parameters is second-order MAML. `remat=True` wraps each inner step in `jax.checkpoint`, so the backward pass
    recomputes a step's activations instead of keeping those of all steps (memory of one step, one extra forward).
    `unroll` is `lax.scan`'s: inner loops are short (official: 2 steps) and XLA:CPU ran a rolled 2-step loop of the
    generator 1.9× slower than the unrolled one, so the default unrolls fully; pass 1 for long loops to bound
    compile time.
    """
    if steps < 1:
        raise ValueError(f"adapt: steps must be at least 1, got {steps}")

    def scan_body(carry, _):
        current, opt_state, loss = inner_step(loss_fn, inner_optimizer, *carry, support)
        return (current, opt_state), loss

    if remat:
        scan_body = jax.checkpoint(scan_body)
    (adapted, _), losses = jax.lax.scan(scan_body, (params, inner_optimizer.init(params)), None, length=steps,
                                        unroll=unroll)
    return adapted, losses


def inner_step(loss_fn: LossFn, inner_optimizer: optax.GradientTransformation, params: Params, opt_state: Any,
               support: Batch) -> tuple[Params, Any, jax.Array]:
    """One optimiser step on `support`: (new params, new optimiser state, the support loss before the step)."""
    loss, grads = jax.value_and_grad(loss_fn)(params, support)
    updates, opt_state = inner_optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def tree_mean(tree: Params, axis: int = 0) -> Params:
    """Mean of every leaf over `axis` (e.g. over the tasks of a meta-batch)."""
    return jax.tree.map(lambda x: jnp.mean(x, axis=axis), tree)
