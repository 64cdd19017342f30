"""Parameter counts per sub-network and multiply-accumulates per frame (convolutions and dense layers only)."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from metaportrait_jax.models.discriminator import Discriminator
from metaportrait_jax.models.generator import Generator, dummy_batch


def count_parameters(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _macs_of_jaxpr(jaxpr) -> int:
    """Sums conv and dot_general MACs over a jaxpr, descending into nested jaxprs (jit, custom_vjp, ...)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            lhs, rhs = (v.aval for v in eqn.invars[:2])
            out = eqn.outvars[0].aval
            dn = eqn.params["dimension_numbers"]
            kernel_spatial = math.prod(rhs.shape[d] for d in dn.rhs_spec[2:])
            in_per_group = rhs.shape[dn.rhs_spec[1]]
            total += math.prod(out.shape) * kernel_spatial * in_per_group
        elif eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs.shape[d] for d in contract)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    total += _macs_of_jaxpr(sub.jaxpr)
                elif hasattr(sub, "eqns"):
                    total += _macs_of_jaxpr(sub)
    return total


def generator_macs(config: ml_collections.ConfigDict, stage: str = "full") -> int:
    """MACs of one batch-1 generator forward (eval mode), from the traced program; nothing is computed."""
    model = Generator(config)
    batch = dummy_batch(config)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))
    jaxpr = jax.make_jaxpr(lambda v, b: model.apply(v, b, stage=stage))(variables, batch)
    return _macs_of_jaxpr(jaxpr.jaxpr)


def model_summary(config: ml_collections.ConfigDict) -> dict:
    """{'parameters': {sub-network: n, ..., 'total': n}, 'spectral_buffers', 'discriminator', 'gmacs': {...}}."""
    model = Generator(config)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_batch(config)))
    params = {name: count_parameters(tree) for name, tree in variables["params"].items()}
    params["total"] = sum(params.values())
    size = config.image_size
    disc = jax.eval_shape(lambda: Discriminator(config).init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    warp, full = generator_macs(config, "warp"), generator_macs(config, "full")
    return {
        "parameters": params,
        "spectral_buffers": count_parameters(variables.get("spectral", {})),
        "discriminator": count_parameters(disc["params"]),
        "gmacs": {"warp": warp / 1e9, "refine": (full - warp) / 1e9, "total": full / 1e9},
    }


def format_summary(summary: dict, title: str) -> str:
    lines = [title, f"{'sub-network':<24}{'parameters':>16}"]
    for name, n in summary["parameters"].items():
        if name != "total":
            lines.append(f"{name:<24}{n:>16,}")
    lines.append(f"{'generator total':<24}{summary['parameters']['total']:>16,}")
    lines.append(f"{'spectral-norm buffers':<24}{summary['spectral_buffers']:>16,}")
    lines.append(f"{'discriminator':<24}{summary['discriminator']:>16,}")
    g = summary["gmacs"]
    lines.append(f"GMACs per frame: {g['total']:.2f} (warp {g['warp']:.2f} + refine {g['refine']:.2f}); "
                 "convolutions and dense layers only")
    return "\n".join(lines)
