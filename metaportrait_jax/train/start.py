"""How every training run starts, decided in one place: resume from the work directory's latest checkpoint, else
take weights from `config.init_from` (checked once against the config), else start fresh. A trainer supplies only
`init_state` and `merge(fresh_state, stored_variables)`, both pure."""

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from metaportrait_jax.train.checkpoint import check_same_model, load_model, require_network, without_spectral_norm


def init_from_variables(config: ml_collections.ConfigDict, network: str) -> dict[str, Any] | None:
    """The variables of the `config.init_from` model (None without one), refused unless it holds `network` and its
    model config equals `config.model`. A checkpoint with spectral norm starting a model without it (meta-training,
    personalisation) has its spectral norm folded in first."""
    source = config.get("init_from")
    if not source:
        return None
    stored_config, variables, _ = load_model(source)
    require_network(stored_config, network, source)
    if "spectral" in variables and not config.model.get("use_sn", True):
        stored_config, variables = without_spectral_norm(stored_config, variables)
    check_same_model(stored_config.model, config.model, f"init_from {source}")
    return variables


def jit_init(fun: Callable, **jit_options: Any) -> Callable:
    """`jax.jit(fun, **jit_options)` for a program that builds a start state: on CPU compiled without XLA's
    backend optimisations, which spent half of a random initialisation's compile time (its many small random-number
    kernels) to speed up a call that takes milliseconds."""
    if jax.default_backend() == "cpu":
        jit_options["compiler_options"] = {"xla_backend_optimization_level": 0}
    return jax.jit(fun, **jit_options)


def start_state(config: ml_collections.ConfigDict, manager: ocp.CheckpointManager, trainer, network: str,
                init_args: tuple, abstract: Any, state_sharding) -> tuple[Any, dict | None, str]:
    """(train state on `state_sharding`, data-iterator state or None, how it started) for `trainer`; `abstract` is
    the shapes and dtypes of its state (`jax.eval_shape` of `init_state`, which the caller has already traced)."""
    latest = manager.latest_step()
    if latest is not None:
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
                              state_sharding)
        restored = manager.restore(latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                    data=ocp.args.JsonRestore()))
        return restored.state, restored.data, f"resumed from {manager.directory}/{latest}"
    stored = init_from_variables(config, network)

    def fresh(rng, args, stored):
        state = trainer.init_state(rng, *args)
        return state if stored is None else trainer.merge(state, stored)

    # Weights are arguments, not constants closed over (large constants slow compilation); host copies, as arrays
    # committed to one device cannot enter a program whose mesh spans several processes.
    init = jit_init(fresh, out_shardings=state_sharding)
    state = init(jax.random.key(config.seed), jax.device_get(init_args), jax.device_get(stored))
    return state, None, f"started from init_from {config.init_from}" if stored is not None else "started fresh"
