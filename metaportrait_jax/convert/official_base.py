"""Converting the official MetaPortrait base checkpoint (PyTorch state dicts) to and from our Flax variable trees.

Naming rule: a parameter's Flax module path is the torch key's module path with every numeric segment joined to its
parent by '_' (`ladder_network.layer1.0.weight_orig` -> `ladder_network/layer1_0/kernel`, `discs.1.conv.weight` ->
`discs_1/conv/kernel`). Leaves: conv/linear `weight`/`weight_orig` -> `kernel`, norm `weight` -> `scale`, `bias` ->
`bias`, spectral-norm buffers `weight_u`/`weight_v` -> the `spectral` collection's `u`/`v`. Layouts: conv
(O, I, kh, kw) -> (kh, kw, I, O); linear (O, I) -> (I, O); LayerNorm2d (C, 1, 1) -> (C,). Which layer is a conv, a
linear or a norm follows from the array's rank. The seed ConvTranspose2d and the LadderEncoder's fc have their own
layouts, and the way back (Flax -> torch) also needs to know the LayerNorm2d and EqualLR layers and the torch names
that end in '_<digit>' (see the constants below).
"""

import logging
import re
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from metaportrait_jax.convert.torch_reader import load_torch_file
from metaportrait_jax.errors import UserError
from metaportrait_jax.models.networks import abstract_discriminator_variables, abstract_variables
from metaportrait_jax.train.checkpoint import save_model

_log = logging.getLogger(__name__)

# The seed ConvTranspose2d (in=id_dim, out, 4, 4), applied to a 1x1 input; our kernel is (in, 4, 4, out) and its
# spectral norm is taken over dim=1 (out) as in torch.
SEED_CONV = "SPDAE_G.conv1"
# The LadderEncoder's fc flattens NCHW in torch but NHWC in our model, so its input rows are permuted.
LADDER_FC = "ladder_network.fc"
# LayerNorm2d affine parameters are (C, 1, 1) in torch; the Flax tree cannot tell them from other norms' (C,).
LAYER_NORM_2D_MODULES = ("dense_motion_network.reger.0", "dense_motion_network.occlusion_net.0")
# EqualLR linears keep the unscaled `weight_orig` (our model applies sqrt(2 / fan_in) at run time, as torch does).
EQUAL_LINEAR_SUFFIX = ".adain.style.linear"
# Torch attribute names that themselves end in '_<digit>' (SPADE decoder blocks and their layers); every other
# '<name>_<N>' Flax segment stands for torch's `<name>.<N>` (a Sequential / ModuleList index).
TORCH_NAMES_WITH_INDEX_SUFFIX = frozenset({"head", "G_middle", "up", "conv", "norm"})

_SPECTRAL = "spectral"
_PARAMS = "params"
_LIST_LIMIT = 20


class CheckpointMismatchError(UserError):
    """A state dict does not fit the model the config describes; the message lists every offending key."""


def torch_module_to_flax_path(module: str) -> tuple[str, ...]:
    """`a.b.0.c` -> ('a', 'b_0', 'c')."""
    path: list[str] = []
    for segment in module.split("."):
        if segment.isdigit():
            if not path:
                raise ValueError(f"torch module path {module!r} starts with an index")
            path[-1] = f"{path[-1]}_{segment}"
        else:
            path.append(segment)
    return tuple(path)


def flax_path_to_torch_module(path: tuple[str, ...]) -> str:
    """('a', 'b_0', 'c') -> `a.b.0.c`; `head_0`, `up_1`, `conv_0`, ... stay as they are (torch attribute names)."""
    segments = []
    for segment in path:
        match = re.fullmatch(r"(.+)_(\d+)", segment)
        if match and match.group(1) not in TORCH_NAMES_WITH_INDEX_SUFFIX:
            segments.extend(match.groups())
        else:
            segments.append(segment)
    return ".".join(segments)


def detect_spectral_norm(state_dict: Mapping[str, Any]) -> bool:
    """True when the generator state dict holds spectral-norm buffers (`*.weight_u`), i.e. the pretrained layout;
    False for an SN-free (`--remove_sn`, meta-trained) checkpoint, which needs `config.model.use_sn=False`."""
    return any(key.endswith(".weight_u") for key in state_dict)


class _LayoutError(ValueError):
    """An array's shape does not fit the layout conversion its key calls for."""


def _ladder_fc_geometry(model_config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(C, h, w) of the LadderEncoder's last feature map, which its fc flattens."""
    widths = tuple(model_config.ladder.widths)
    side, remainder = divmod(model_config.image_size, 2 ** len(widths))
    if remainder or side == 0:
        raise ValueError(f"image_size {model_config.image_size} is not divisible by 2**{len(widths)} "
                         f"(ladder.widths={widths})")
    return widths[-1], side, side


def _ladder_fc_to_flax(weight: np.ndarray, geometry: tuple[int, int, int]) -> np.ndarray:
    """torch W[o, c*h*w + y*w + x] -> kernel[(y*w + x)*C + c, o]."""
    channels, height, width = geometry
    if weight.ndim != 2 or weight.shape[1] != channels * height * width:
        raise _LayoutError(f"expected (z, {channels}*{height}*{width}) for an NCHW-flattening fc")
    return weight.reshape(weight.shape[0], channels, height, width).transpose(2, 3, 1, 0).reshape(-1, weight.shape[0])


def _ladder_fc_to_torch(kernel: np.ndarray, geometry: tuple[int, int, int]) -> np.ndarray:
    channels, height, width = geometry
    return kernel.reshape(height, width, channels, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)


def _official_target(key: str, array: np.ndarray) -> tuple[str, ...] | None:
    """Flax entry (collection, *module path, leaf) a torch entry maps to; None when the key is not a parameter or
    SN buffer. Conv/linear weights become `kernel`, 1-d and (C, 1, 1) weights are norm `scale`s."""
    module, _, leaf = key.rpartition(".")
    if not module:
        return None
    path = torch_module_to_flax_path(module)
    if leaf in ("weight_u", "weight_v"):
        return (_SPECTRAL, *path, leaf[-1])
    if leaf == "bias":
        return (_PARAMS, *path, "bias")
    if leaf == "weight_orig":
        return (_PARAMS, *path, "kernel")
    if leaf == "weight":
        is_norm = _is_layer_norm_2d_vector(array) or array.ndim == 1
        return (_PARAMS, *path, "scale" if is_norm else "kernel")
    return None


def _is_layer_norm_2d_vector(array: np.ndarray) -> bool:
    return array.ndim == 3 and array.shape[1:] == (1, 1)


def _official_array_to_flax(key: str, array: np.ndarray, fc_geometry: tuple[int, int, int] | None) -> np.ndarray:
    """Torch layout -> Flax layout for one entry. Raises `_LayoutError` when the rank does not fit the key."""
    module, _, leaf = key.rpartition(".")
    if leaf in ("weight_u", "weight_v"):
        if array.ndim != 1:
            raise _LayoutError("spectral-norm vectors are 1-d")
        return array
    if leaf == "bias" or (leaf == "weight" and array.ndim in (1, 3)):
        if _is_layer_norm_2d_vector(array):
            return array.reshape(-1)
        if array.ndim != 1:
            raise _LayoutError("a norm weight or bias is (C,) or, for LayerNorm2d, (C, 1, 1)")
        return array
    if module == SEED_CONV:
        if array.ndim != 4:
            raise _LayoutError("the seed ConvTranspose2d weight is (in, out, kh, kw)")
        return array.transpose(0, 2, 3, 1)
    if module == LADDER_FC and fc_geometry is not None:
        return _ladder_fc_to_flax(array, fc_geometry)
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2:
        return array.T
    raise _LayoutError("a conv weight is 4-d, a linear weight 2-d")


def _official_key(flat_key: tuple[str, ...], spectral_modules: set[tuple[str, ...]]) -> str:
    """Torch key of a flattened Flax entry (collection, *module path, leaf)."""
    collection, *module_path, leaf = flat_key
    module = flax_path_to_torch_module(tuple(module_path))
    if collection == _SPECTRAL:
        return f"{module}.weight_{leaf}"
    if leaf == "kernel":
        sn_wrapped = tuple(module_path) in spectral_modules or module.endswith(EQUAL_LINEAR_SUFFIX)
        return f"{module}.weight_orig" if sn_wrapped else f"{module}.weight"
    if leaf == "scale":
        return f"{module}.weight"
    return f"{module}.{leaf}"


def _flax_entry_to_official(flat_key: tuple[str, ...], array: np.ndarray,
                            fc_geometry: tuple[int, int, int] | None) -> np.ndarray:
    collection, *module_path, leaf = flat_key
    module = flax_path_to_torch_module(tuple(module_path))
    if collection == _SPECTRAL:
        return array
    if leaf == "kernel":
        if module == SEED_CONV:
            return array.transpose(0, 3, 1, 2)
        if module == LADDER_FC and fc_geometry is not None:
            return _ladder_fc_to_torch(array, fc_geometry)
        if array.ndim == 4:
            return array.transpose(3, 2, 0, 1)
        if array.ndim == 2:
            return array.T
        raise ValueError(f"{'/'.join(flat_key)}: kernel of rank {array.ndim} has no torch layout")
    if module in LAYER_NORM_2D_MODULES:
        return array.reshape(-1, 1, 1)
    return array


def _format_list(title: str, items: list[str]) -> str:
    shown = "; ".join(items[:_LIST_LIMIT])
    more = f"; ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
    return f"{len(items)} {title}: {shown}{more}"


def _official_to_flax(state_dict: Mapping[str, Any], abstract_variables: Mapping[str, Any],
                      fc_geometry: tuple[int, int, int] | None, what: str) -> dict[str, Any]:
    """Converts every entry, then checks the result against the model's abstract tree (all problems at once)."""
    expected = traverse_util.flatten_dict(abstract_variables)
    spectral_modules = {k[1:-1] for k in expected if k[0] == _SPECTRAL}
    converted: dict[tuple[str, ...], np.ndarray] = {}
    matched: set[tuple[str, ...]] = set()
    unknown, misshaped = [], []
    for key, value in state_dict.items():
        array = np.asarray(value)
        flat_key = _official_target(key, array)
        if flat_key is None or flat_key not in expected:
            unknown.append(f"{key} {tuple(array.shape)}")
            continue
        matched.add(flat_key)
        target = expected[flat_key]
        try:
            flax_array = _official_array_to_flax(key, array, fc_geometry)
        except _LayoutError as e:
            misshaped.append(f"{key} {tuple(array.shape)} ({e}); model expects {'/'.join(flat_key)} "
                             f"{tuple(target.shape)}")
            continue
        if tuple(flax_array.shape) != tuple(target.shape):
            misshaped.append(f"{key} {tuple(array.shape)} -> {'/'.join(flat_key)} {tuple(flax_array.shape)}, "
                             f"model expects {tuple(target.shape)}")
            continue
        if not np.issubdtype(array.dtype, np.floating):
            misshaped.append(f"{key}: dtype {array.dtype}, expected a floating-point array")
            continue
        converted[flat_key] = np.asarray(flax_array, dtype=target.dtype)
    missing = [f"{_official_key(k, spectral_modules)} (-> {'/'.join(k)} {tuple(expected[k].shape)})"
               for k in expected if k not in matched]
    if unknown or missing or misshaped:
        parts = [_format_list(title, items) for title, items in
                 (("unknown keys", unknown), ("missing keys", missing), ("mis-shaped keys", misshaped)) if items]
        raise CheckpointMismatchError(f"{what} state dict does not match the model: " + " | ".join(parts))
    return traverse_util.unflatten_dict(converted)


def _flax_to_official(variables: Mapping[str, Any],
                      fc_geometry: tuple[int, int, int] | None) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict({k: v for k, v in variables.items() if k in (_PARAMS, _SPECTRAL)})
    spectral_modules = {k[1:-1] for k in flat if k[0] == _SPECTRAL}
    return {_official_key(k, spectral_modules): _flax_entry_to_official(k, np.asarray(v), fc_geometry)
            for k, v in flat.items()}


def _check_sn_matches_config(state_dict: Mapping[str, Any], config: ml_collections.ConfigDict) -> None:
    has_sn = detect_spectral_norm(state_dict)
    if has_sn != config.model.use_sn:
        layout = "spectral-norm (pretrained)" if has_sn else "SN-free (--remove_sn / meta-trained)"
        raise CheckpointMismatchError(f"generator state dict has the {layout} layout but config.model.use_sn="
                                      f"{config.model.use_sn}; set config.model.use_sn={has_sn}")


def official_to_flax_generator(state_dict: Mapping[str, np.ndarray],
                               config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Official generator state dict -> `{'params': ..., 'spectral': ...}` for `Generator(config.model)`.

    The 'spectral' collection (u, v of the 25 SN layers) is present only for an SN checkpoint, which needs
    `config.model.use_sn=True`; an SN-free checkpoint needs `use_sn=False` (see `detect_spectral_norm`).
    Raises `CheckpointMismatchError` listing unknown, missing and mis-shaped keys.
    """
    _check_sn_matches_config(state_dict, config)
    return _official_to_flax(state_dict, abstract_variables("generator", config.model),
                             _ladder_fc_geometry(config.model), "generator")


def flax_to_official_generator(variables: Mapping[str, Any],
                               config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Inverse of `official_to_flax_generator`: official torch keys and layouts, numpy arrays."""
    return _flax_to_official(variables, _ladder_fc_geometry(config.model))


def official_to_flax_discriminator(state_dict: Mapping[str, np.ndarray],
                                   config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Official discriminator state dict (`discs.1.*`) -> `{'params': ...}` for our discriminator."""
    return _official_to_flax(state_dict, abstract_discriminator_variables("generator", config.model), None, "discriminator")


def flax_to_official_discriminator(variables: Mapping[str, Any],
                                   config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Inverse of `official_to_flax_discriminator`."""
    del config  # the discriminator's layouts do not depend on the architecture settings
    return _flax_to_official(variables, None)


def convert_official_base(checkpoint_path: str, output_dir: str, config: ml_collections.ConfigDict) -> None:
    """Converts an official checkpoint (`{'generator': sd, 'discriminator': sd, ...}` or a bare generator state dict)
    into our model checkpoint at `output_dir` (see `train.checkpoint.save_model`). `config.model.use_sn` is set from
    the checkpoint's layout."""
    checkpoint = load_torch_file(checkpoint_path)
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatchError(f"{checkpoint_path}: expected a dict, got {type(checkpoint).__name__}")
    if isinstance(checkpoint.get("generator"), dict):
        generator_state, discriminator_state = checkpoint["generator"], checkpoint.get("discriminator")
    elif checkpoint and all(isinstance(v, np.ndarray) for v in checkpoint.values()):
        generator_state, discriminator_state = checkpoint, None
    else:
        raise CheckpointMismatchError(f"{checkpoint_path}: neither a {{'generator': ...}} checkpoint nor a bare "
                                      f"state dict (top-level keys: {sorted(checkpoint)[:10]})")
    config = ml_collections.ConfigDict(config.to_dict())
    use_sn = detect_spectral_norm(generator_state)
    layout = "spectral-norm" if use_sn else "SN-free"
    if use_sn != config.model.use_sn:
        _log.warning("%s: %s checkpoint; setting config.model.use_sn=%s", checkpoint_path, layout, use_sn)
        config.model.use_sn = use_sn
    else:
        _log.info("%s: %s checkpoint (config.model.use_sn=%s)", checkpoint_path, layout, use_sn)
    generator_variables = official_to_flax_generator(generator_state, config)
    discriminator_variables = None
    if discriminator_state is not None:
        discriminator_variables = official_to_flax_discriminator(discriminator_state, config)
    save_model(output_dir, config, generator_variables, discriminator_variables, network="generator")
    _log.info("%s -> %s (%d generator tensors%s)", checkpoint_path, output_dir,
              len(jax.tree.leaves(generator_variables)),
              "" if discriminator_variables is None else ", with discriminator")
