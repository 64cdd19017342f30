"""Inception-v3 weights for FID from a user-supplied `.pth` state dict (read by `torch_reader`, never unpickled).

Accepted layouts, both torchvision's `Inception3` keys (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_var`,
..., `fc.weight`):
- pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (the TensorFlow FID graph; `fc` has 1008 outputs), and
- torchvision's ImageNet `inception_v3_google-*.pth` (`fc` has 1000 outputs; its `AuxLogits.*` are ignored).

The variant is told by the `fc` size unless given. Batch norms (eps 1e-3) are folded into their convs in float64.
"""

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from metaportrait_jax.convert.official_base import CheckpointMismatchError
from metaportrait_jax.convert.torch_reader import load_torch_file
from metaportrait_jax.models.inception import MIN_INPUT_SIZE, VARIANTS, InceptionV3Features

BATCH_NORM_EPS = 1e-3
# `fc` output count -> variant, for weights whose variant is not given.
VARIANT_BY_CLASSES = {1008: "pytorch_fid", 1000: "torchvision"}

Params = dict


@functools.cache
def _conv_shapes() -> dict[str, tuple[int, ...]]:
    """'.'-joined module path (torch naming, e.g. `Mixed_5b.branch1x1`) -> kernel shape (kh, kw, I, O), from the module
    itself (both variants have the same parameters)."""
    shapes = jax.eval_shape(InceptionV3Features(resize=False).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), jnp.float32))
    flat = traverse_util.flatten_dict(shapes["params"])
    return {".".join(path[:-2]): tuple(leaf.shape) for path, leaf in flat.items() if path[-1] == "kernel"}


def _module_tensor_shapes(kernel_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Suffix -> torch shape of one BasicConv2d's tensors, from its flax kernel shape (kh, kw, I, O)."""
    kh, kw, cin, cout = kernel_shape
    return {"conv.weight": (cout, cin, kh, kw), "bn.weight": (cout,), "bn.bias": (cout,), "bn.running_mean": (cout,),
            "bn.running_var": (cout,)}


def expected_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """torch key -> shape of every tensor the port reads (94 convs and their batch norms; `fc` only names the
    variant)."""
    return {f"{module}.{suffix}": shape for module, kernel in _conv_shapes().items()
            for suffix, shape in _module_tensor_shapes(kernel).items()}


def detect_variant(state_dict: Mapping[str, np.ndarray], path: str) -> str:
    """The variant a state dict's `fc.weight` row count names (1008: pytorch_fid, 1000: torchvision)."""
    fc = state_dict.get("fc.weight")
    classes = None if fc is None else np.shape(fc)[0]
    if classes not in VARIANT_BY_CLASSES:
        found = "no fc.weight" if fc is None else f"fc.weight of shape {np.shape(fc)}"
        raise CheckpointMismatchError(f"{path}: cannot tell the Inception variant ({found}; 1008 outputs is "
                                      f"pytorch-fid's, 1000 torchvision's); name it with --fid-variant")
    return VARIANT_BY_CLASSES[classes]


def inception_to_flax(state_dict: Mapping[str, np.ndarray], what: str = "state dict") -> Params:
    """torchvision `Inception3` state dict -> `InceptionV3Features` params with batch norms folded.

    Per conv `P`: kernel = `P.conv.weight` (O, I, kh, kw) -> (kh, kw, I, O) times γ/√(var + eps); bias = β − mean·γ/√(var
    + eps), with γ, β, mean, var from `P.bn.{weight, bias, running_mean, running_var}`. Other keys (`fc`, `AuxLogits`,
    `num_batches_tracked`) are ignored. Raises `CheckpointMismatchError` listing every missing or mis-shaped key.
    """
    params: dict[tuple[str, ...], np.ndarray] = {}
    missing, misshaped = [], []
    for module, kernel in _conv_shapes().items():
        wanted = _module_tensor_shapes(kernel)
        arrays = {}
        for suffix, shape in wanted.items():
            key = f"{module}.{suffix}"
            if key not in state_dict:
                missing.append(key)
            elif np.shape(state_dict[key]) != shape:
                misshaped.append(f"{key} {np.shape(state_dict[key])} (expected {shape})")
            else:
                arrays[suffix] = np.asarray(state_dict[key], np.float64)
        if len(arrays) < len(wanted):
            continue
        scale = arrays["bn.weight"] / np.sqrt(arrays["bn.running_var"] + BATCH_NORM_EPS)
        path = (*module.split("."), "conv")
        params[(*path, "kernel")] = (arrays["conv.weight"].transpose(2, 3, 1, 0) * scale).astype(np.float32)
        params[(*path, "bias")] = (arrays["bn.bias"] - arrays["bn.running_mean"] * scale).astype(np.float32)
    parts = [f"{len(items)} {title}: {', '.join(items[:8])}{', ...' if len(items) > 8 else ''}"
             for title, items in (("missing keys", missing), ("mis-shaped keys", misshaped)) if items]
    if parts:
        raise CheckpointMismatchError(f"{what} does not fit Inception-v3: " + " | ".join(parts))
    return traverse_util.unflatten_dict(params)


def load_inception(path: str, variant: str | None = None) -> tuple[InceptionV3Features, Params]:
    """(module, params) from a `.pth` of torchvision Inception-v3 keys; `variant` None tells it from `fc.weight`.

    Raises `TorchFileError` for unreadable or code-carrying files and `CheckpointMismatchError` when the weights do not
    fit; apply as `module.apply({"params": params}, images)` with images `[B, H, W, 3]` in [0, 1].
    """
    state_dict = load_torch_file(path)
    if not isinstance(state_dict, dict):
        raise CheckpointMismatchError(f"{path}: expected a state dict, found a {type(state_dict).__name__}")
    if variant is None:
        variant = detect_variant(state_dict, path)
    elif variant not in VARIANTS:
        raise ValueError(f"Inception variant must be one of {VARIANTS}, got {variant!r}")
    return InceptionV3Features(variant), inception_to_flax(state_dict, path)
