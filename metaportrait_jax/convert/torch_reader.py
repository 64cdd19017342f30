"""Reading `torch.save` files (zip format, torch>=1.6) into numpy without torch and without running pickled code.

A torch zip checkpoint holds `<prefix>/data.pkl` (the pickled object tree) and one raw little-endian buffer per tensor
storage, `<prefix>/data/<key>`. The pickle refers to storages by persistent id and rebuilds tensors through
`torch._utils._rebuild_tensor_v2`. The unpickler below resolves exactly those globals (plus `collections.OrderedDict`
and a few builtin containers) to numpy stand-ins; any other global is refused before it can be called.
"""

import pickle
import zipfile
from typing import Any

import numpy as np

from metaportrait_jax.errors import UserError


class TorchFileError(UserError):
    """A file is not a readable torch zip checkpoint."""


class UnsafeCheckpointError(TorchFileError):
    """A checkpoint's pickle names a global outside the tensor-state-dict allowlist."""


# Storage class name -> little-endian dtype of its raw buffer.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("<i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
# Storage types numpy cannot hold exactly; refused with a message instead of a silent cast.
_UNSUPPORTED_STORAGES = ("BFloat16Storage", "ComplexFloatStorage", "ComplexDoubleStorage", "QInt8Storage",
                         "QUInt8Storage", "QInt32Storage", "QUInt4x2Storage", "QUInt2x4Storage", "UntypedStorage")

_BUILTIN_CONTAINERS = {"set": set, "frozenset": frozenset, "tuple": tuple, "list": list, "dict": dict}

_LEGACY_PICKLE_START = b"\x80"
_ZIP_LOCAL_HEADER = b"PK\x03\x04"


class _StorageType:
    """Stand-in for a `torch.<Name>Storage` class: only its element dtype matters here."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = dtype


class _StateDict(dict):
    """Stand-in for `collections.OrderedDict`; drops the `_metadata` attribute torch attaches to state dicts."""

    def __setstate__(self, state: Any) -> None:
        del state


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that maps the tensor-rebuilding globals to numpy code and refuses all others."""

    def __init__(self, file, path: str, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(file)
        self._path = path
        self._archive = archive
        self._prefix = prefix
        self._byteorder = byteorder
        self._storages: dict[str, np.ndarray] = {}
        self._storages_given_away: set[int] = set()

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module == "torch" and name in _UNSUPPORTED_STORAGES:
            raise TorchFileError(f"{self._path}: tensors of storage type torch.{name} are not supported; "
                                 "convert them to float32 before saving")
        if module == "collections" and name == "OrderedDict":
            return _StateDict
        # Protocol-2 pickles name the builtins module by its Python 2 name.
        if module in ("builtins", "__builtin__") and name in _BUILTIN_CONTAINERS:
            return _BUILTIN_CONTAINERS[name]
        raise UnsafeCheckpointError(f"{self._path}: refusing to load: the pickle references the global "
                                    f"{module}.{name}, which a tensor checkpoint does not need")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise TorchFileError(f"{self._path}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            entry = f"{self._prefix}data/{key}"
            dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            try:
                info = self._archive.getinfo(entry)
            except KeyError:
                raise TorchFileError(f"{self._path}: storage entry {entry} is missing") from None
            if info.file_size != numel * dtype.itemsize:
                raise TorchFileError(f"{self._path}: storage {entry} holds {info.file_size} bytes, expected "
                                     f"{numel} x {dtype.itemsize}")
            # Read into a writable buffer so a tensor covering its whole storage needs no second copy.
            buffer = bytearray(info.file_size)
            with self._archive.open(entry) as f:
                if f.readinto(buffer) != info.file_size:
                    raise TorchFileError(f"{self._path}: storage {entry} is truncated")
            storage = np.frombuffer(buffer, dtype=dtype)
            if not dtype.isnative:
                storage = storage.astype(dtype.newbyteorder("="))
            self._storages[key] = storage
        return self._storages[key]

    def _rebuild_tensor(self, storage: Any, storage_offset: Any, size: Any, stride: Any, *unused: Any) -> np.ndarray:
        """Tensor view `storage[offset + sum(i_k * stride_k)]` of shape `size`, returned as its own array."""
        del unused  # requires_grad, backward hooks, metadata
        if not (isinstance(storage, np.ndarray) and isinstance(storage_offset, int)
                and isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
                and all(isinstance(v, int) and v >= 0 for v in size + stride + (storage_offset,))):
            raise TorchFileError(f"{self._path}: malformed tensor record (offset {storage_offset!r}, size {size!r}, "
                                 f"stride {stride!r})")
        if 0 in size:
            return np.empty(size, dtype=storage.dtype)
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise TorchFileError(f"{self._path}: tensor of size {size}, stride {stride}, offset {storage_offset} "
                                 f"reaches past its storage of {storage.size} elements")
        numel = int(np.prod(size))
        if (storage_offset == 0 and numel == storage.size and stride == _contiguous_strides(size)
                and id(storage) not in self._storages_given_away):
            self._storages_given_away.add(id(storage))
            return storage.reshape(size)
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                               strides=tuple(s * itemsize for s in stride), writeable=False)
        return view.copy()


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> Any:
    del requires_grad, backward_hooks
    return data


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    step = 1
    for n in reversed(size):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _to_plain(value: Any) -> Any:
    """OrderedDict stand-ins -> dict, recursively through lists and tuples."""
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_plain(v) for v in value)
    return value


def _classify_non_zip(path: str) -> TorchFileError:
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(_ZIP_LOCAL_HEADER):
        return TorchFileError(f"{path}: truncated or corrupt zip archive")
    if head.startswith(_LEGACY_PICKLE_START):
        return TorchFileError(f"{path}: legacy torch format; re-save with torch>=1.6")
    return TorchFileError(f"{path}: not a torch checkpoint (neither a zip archive nor a legacy torch pickle)")


def load_torch_file(path: str) -> Any:
    """Loads a `torch.save` zip file as nested dicts / lists / tuples with numpy arrays in place of tensors.

    Tensors come back with their torch shape and dtype (float32/16/64, int64/32/16/8, uint8, bool); tensors that
    were views (transposed, sliced) are materialised. No pickled code runs: any global other than the tensor
    rebuilders, storage classes, `collections.OrderedDict` and builtin containers raises `UnsafeCheckpointError`.
    """
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise TorchFileError(f"{path}: cannot open ({e.strerror})") from None
    if not zipfile.is_zipfile(path):
        raise _classify_non_zip(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise TorchFileError(f"{path}: a zip archive but not a torch checkpoint (found {len(pickles)} "
                                     "data.pkl entries, expected 1)")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = "little"
            if f"{prefix}byteorder" in archive.namelist():
                byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise TorchFileError(f"{path}: unknown byteorder record {byteorder!r}")
            with archive.open(pickles[0]) as pickle_file:
                unpickler = _RestrictedUnpickler(pickle_file, path, archive, prefix, byteorder)
                result = unpickler.load()
    except TorchFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise TorchFileError(f"{path}: truncated or corrupt zip archive ({e})") from None
    except (pickle.UnpicklingError, TypeError, AttributeError, IndexError, KeyError, ValueError) as e:
        raise TorchFileError(f"{path}: corrupt checkpoint pickle ({type(e).__name__}: {e})") from None
    return _to_plain(result)
