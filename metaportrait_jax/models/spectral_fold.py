"""Folding spectral norm into plain weights (the official `--remove_sn`): meta-training and personalisation adapt
the weights the network actually applies."""

from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from flax import traverse_util

from metaportrait_jax.models.layers import conv_weight_matrix
from metaportrait_jax.models.networks import abstract_variables
from metaportrait_jax.models.spade import seed_weight_matrix

SEED_CONV = ("SPDAE_G", "conv1")  # the one spectral-normalised kernel not laid out as a conv's [kh, kw, I, O]


def fold_spectral_norm(variables: Mapping[str, Any], model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The official `--remove_sn`: every SN'd kernel becomes kernel / sigma with sigma = u . (W_mat v) from the
    stored u, v (no power iteration), computed in float64. Returns `{'params': ...}` for `Generator` with
    `use_sn=False`; its outputs are those of `variables` in eval mode."""
    if "spectral" not in variables:
        raise ValueError("fold_spectral_norm: variables have no 'spectral' collection (already SN-free?)")
    folded = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(variables["params"]).items()}
    vectors = traverse_util.flatten_dict(variables["spectral"])
    for module_path in sorted({k[:-1] for k in vectors}):
        kernel_key = (*module_path, "kernel")
        if kernel_key not in folded:
            raise ValueError(f"fold_spectral_norm: spectral/{'/'.join(module_path)} has no params kernel")
        kernel = folded[kernel_key]
        matrix = seed_weight_matrix if module_path == SEED_CONV else conv_weight_matrix
        weight_matrix = matrix(kernel.astype(np.float64))
        u = np.asarray(vectors[(*module_path, "u")], np.float64)
        v = np.asarray(vectors[(*module_path, "v")], np.float64)
        folded[kernel_key] = (kernel / np.dot(u, weight_matrix @ v)).astype(kernel.dtype)
    sn_free = ml_collections.ConfigDict(model_config.to_dict())
    sn_free.use_sn = False
    expected = traverse_util.flatten_dict(abstract_variables("generator", sn_free))
    if set(expected) != {("params", *k) for k in folded}:
        raise ValueError("fold_spectral_norm: the folded parameters do not match the SN-free generator's tree")
    return {"params": traverse_util.unflatten_dict(folded)}

