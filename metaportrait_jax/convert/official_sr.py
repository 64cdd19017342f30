"""Converting the official temporal SR checkpoint (`temporal_gfpgan.pth`) and GFPGAN v1.3 to and from our Flax tree.

Key rule (the inverse is the same table read backwards): Flax `<list>_<i>` is torch `<list>.<i>` for the official
ModuleLists and Sequentials (LISTS below); an SFT head's `conv1` / `conv2` are its Sequential's `0` / `2`; leaves
`kernel` -> `weight`, a StyleConv's `noise_weight` -> `weight`, `constant_input` -> `constant_input.weight`.
Layouts: conv (O, I, kh, kw) <-> (kh, kw, I, O); modulated conv (1, O, I, kh, kw) <-> (kh, kw, I, O); linear (O, I) <->
(I, O); decoder conv biases (1, C, 1, 1) <-> (C,); constant input (1, C, 4, 4) <-> (4, 4, C). The 15
`stylegan_decoder.noises.noise<i>` buffers are skipped (the network runs with zero noise).

GFPGAN v1.3 (`GFPGANv1.3.pth`, key `params_ema`) has every key but the 14 temporal windows; those start fresh
(PyTorch default init, zero output conv), as the official training does with `strict=False`.
"""

import logging
import re
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from metaportrait_jax.convert.official_base import CheckpointMismatchError, _format_list
from metaportrait_jax.convert.torch_reader import load_torch_file
from metaportrait_jax.models.temporal_sr import init_variables
from metaportrait_jax.models.networks import abstract_variables
from metaportrait_jax.train.checkpoint import save_model

_log = logging.getLogger(__name__)

LISTS = ("conv_body_down", "window_down", "conv_body_up", "recurrent_forward", "condition_scale", "condition_shift",
         "toRGB", "style_mlp", "style_convs", "to_rgbs")
WINDOWS = ("window_down", "recurrent_forward")
NOISE_BUFFER = re.compile(r"stylegan_decoder\.noises\.noise\d+")
SFT_HEADS = ("condition_scale", "condition_shift")
# Checkpoint entries tried in this order: the released inference weights use `params`, GFPGAN v1.3 `params_ema`.
STATE_DICT_KEYS = ("params", "params_ema")


def torch_key(path: tuple[str, ...]) -> str:
    """Flax parameter path (module names..., leaf) -> official state-dict key."""
    segments = []
    for segment in path[:-1]:
        match = re.fullmatch(r"(.+)_(\d+)", segment)
        if match and match.group(1) in LISTS:
            segments.extend(match.groups())
        elif segment in ("conv1", "conv2") and segments and segments[-2] in SFT_HEADS:
            segments.append("0" if segment == "conv1" else "2")
        else:
            segments.append(segment)
    leaf = path[-1]
    if leaf == "constant_input":
        segments.append("constant_input")
    segments.append("weight" if leaf in ("kernel", "noise_weight", "constant_input") else leaf)
    return ".".join(segments)


def _is_decoder_bias(path: tuple[str, ...]) -> bool:
    return path[0] == "stylegan_decoder" and path[-1] == "bias" and path[-2] != "modulation" \
        and not path[-2].startswith("style_mlp")


def to_torch_layout(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
    """Our array at `path` in the official layout."""
    if path[-1] == "constant_input":
        return array.transpose(2, 0, 1)[None]
    if _is_decoder_bias(path):
        return array.reshape(1, -1, 1, 1)
    if path[-1] == "kernel" and array.ndim == 4:
        kernel = array.transpose(3, 2, 0, 1)
        return kernel[None] if path[-2] == "modulated_conv" else kernel
    if path[-1] == "kernel" and array.ndim == 2:
        return array.T
    return array


def to_flax_layout(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
    """An official array in our layout at `path` (the inverse of `to_torch_layout`)."""
    if path[-1] == "constant_input":
        return array[0].transpose(1, 2, 0)
    if _is_decoder_bias(path):
        return array.reshape(-1)
    if path[-1] == "kernel" and path[-2] == "modulated_conv":
        return array[0].transpose(2, 3, 1, 0)
    if path[-1] == "kernel" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if path[-1] == "kernel" and array.ndim == 2:
        return array.T
    return array


def official_shapes(model_config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
    """Official state-dict key -> shape for the network `model_config` describes (noise buffers excluded)."""
    abstract = traverse_util.flatten_dict(abstract_variables("temporal_sr", model_config)["params"])
    return {torch_key(path): to_torch_layout(path, np.empty(x.shape, np.float32)).shape
            for path, x in abstract.items()}


def official_to_flax(state_dict: Mapping[str, Any], model_config: ml_collections.ConfigDict,
                     fresh_windows_seed: int | None = None) -> dict[str, Any]:
    """Official state dict -> `{'params': ...}` for `TemporalSR(model_config)`.

    With `fresh_windows_seed`, missing temporal-window weights (a GFPGAN v1.3 state dict) are initialised as the
    official training does; otherwise every key must be there. Raises `CheckpointMismatchError` listing unknown,
    missing and mis-shaped keys.
    """
    abstract = traverse_util.flatten_dict(abstract_variables("temporal_sr", model_config)["params"])
    by_key = {torch_key(path): path for path in abstract}
    converted, unknown, misshaped = {}, [], []
    for key, value in state_dict.items():
        if NOISE_BUFFER.fullmatch(key):
            continue
        array = np.asarray(value)
        path = by_key.get(key)
        if path is None:
            unknown.append(f"{key} {tuple(array.shape)}")
            continue
        expected = to_torch_layout(path, np.empty(abstract[path].shape, np.float32)).shape
        if array.shape != expected or not np.issubdtype(array.dtype, np.floating):
            misshaped.append(f"{key} {tuple(array.shape)} {array.dtype}, model expects {expected} float")
            continue
        converted[path] = to_flax_layout(path, array).astype(np.float32)
    missing = [key for key, path in by_key.items() if path not in converted]
    fill_windows = fresh_windows_seed is not None and missing and all(
        by_key[key][0].rsplit("_", 1)[0] in WINDOWS for key in missing)
    if fill_windows:
        fresh = traverse_util.flatten_dict(jax.device_get(
            init_variables(model_config, jax.random.key(fresh_windows_seed))["params"]))
        converted.update({by_key[key]: np.asarray(fresh[by_key[key]]) for key in missing})
        _log.info("initialised %d temporal-window arrays afresh (a GFPGAN checkpoint has none)", len(missing))
        missing = []
    if unknown or missing or misshaped:
        parts = [_format_list(title, items) for title, items in
                 (("unknown keys", unknown), ("missing keys", missing), ("mis-shaped keys", misshaped)) if items]
        raise CheckpointMismatchError("temporal SR state dict does not match the model: " + " | ".join(parts))
    return {"params": traverse_util.unflatten_dict(converted)}


def flax_to_official(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """`{'params': ...}` -> official state dict (without the unused noise buffers)."""
    flat = traverse_util.flatten_dict(dict(variables["params"]))
    return {torch_key(path): to_torch_layout(path, np.asarray(x)) for path, x in flat.items()}


def select_state_dict(checkpoint: Any, path: str, key: str | None = None) -> tuple[dict[str, Any], str]:
    """The state dict inside a BasicSR checkpoint: `checkpoint[key]`, or the first of `params`, `params_ema`, or
    the checkpoint itself when it is a bare state dict. Returns (state dict, where it was found)."""
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatchError(f"{path}: expected a dict, got {type(checkpoint).__name__}")
    if key is not None:
        if not isinstance(checkpoint.get(key), dict):
            raise CheckpointMismatchError(f"{path}: no state dict under {key!r} (top-level keys: "
                                          f"{sorted(checkpoint)[:10]})")
        return checkpoint[key], key
    for candidate in STATE_DICT_KEYS:
        if isinstance(checkpoint.get(candidate), dict):
            return checkpoint[candidate], candidate
    if checkpoint and all(isinstance(v, np.ndarray) for v in checkpoint.values()):
        return checkpoint, "the top level"
    raise CheckpointMismatchError(f"{path}: neither a {{'params': ...}} / {{'params_ema': ...}} checkpoint nor a bare "
                                  f"state dict (top-level keys: {sorted(checkpoint)[:10]})")


def convert_official_sr(checkpoint_path: str, output_dir: str, config: ml_collections.ConfigDict,
                        key: str | None = None) -> bool:
    """`temporal_gfpgan.pth` (or `GFPGANv1.3.pth`) -> our model checkpoint at `output_dir`. Returns True when the
    temporal windows were missing (a GFPGAN checkpoint) and were initialised afresh (seed `config.seed`)."""
    state_dict, where = select_state_dict(load_torch_file(checkpoint_path), checkpoint_path, key)
    has_windows = any(name.split(".", 1)[0] in WINDOWS for name in state_dict)
    variables = official_to_flax(state_dict, config.model, None if has_windows else config.seed)
    save_model(output_dir, config, variables, network="temporal_sr")
    _log.info("%s (state dict from %s) -> %s", checkpoint_path, where, output_dir)
    return not has_windows
