"""load_torch_file against files written by real torch.save, plus refusal of unsafe and broken files."""

import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

from metaportrait_jax.convert.torch_reader import TorchFileError, UnsafeCheckpointError, load_torch_file


def _save(tmp_path, obj, name="ckpt.pth", **kwargs):
    path = str(tmp_path / name)
    torch.save(obj, path, **kwargs)
    return path


def test_dtypes_shapes_and_values_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 4, 5, generator=gen),
        "f16": torch.randn(7, generator=gen).half(),
        "f64": torch.randn(2, 3, generator=gen).double(),
        "i64": torch.randint(-2**40, 2**40, (4, 2), generator=gen),
        "i32": torch.randint(-2**30, 2**30, (5,), generator=gen, dtype=torch.int32),
        "i16": torch.randint(-2**14, 2**14, (3,), generator=gen, dtype=torch.int16),
        "i8": torch.randint(-100, 100, (3,), generator=gen, dtype=torch.int8),
        "u8": torch.randint(0, 255, (2, 2), generator=gen, dtype=torch.uint8),
        "bool": torch.rand(6, generator=gen) > 0.5,
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    loaded = load_torch_file(_save(tmp_path, tensors))
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        expected = tensor.numpy()
        assert loaded[name].dtype == expected.dtype, name
        assert loaded[name].shape == expected.shape, name
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)


def test_non_contiguous_views_sharing_one_storage(tmp_path):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    views = {
        "base": base,
        "transposed": base.t(),
        "rows": base[2:5],
        "strided": base[1::2, 3::3],
        "column": base[:, 7],
        "expanded": base[0, :3].unsqueeze(0).expand(4, 3),
        "permuted": base.reshape(2, 3, 10).permute(2, 0, 1),
    }
    assert all(v.untyped_storage().data_ptr() == base.untyped_storage().data_ptr() for v in views.values())
    loaded = load_torch_file(_save(tmp_path, views))
    for name, view in views.items():
        np.testing.assert_array_equal(loaded[name], view.numpy(), err_msg=name)
    # Each returned array owns its data: writing one must not change another.
    names = list(loaded)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.shares_memory(loaded[a], loaded[b]), (a, b)


def test_nested_checkpoint_with_module_state_dict_and_optimizer(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.InstanceNorm2d(4, affine=True),
                                 torch.nn.utils.spectral_norm(torch.nn.Linear(5, 6)))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3, betas=(0.5, 0.999))
    loss = module[0](torch.randn(1, 3, 7, 7)).sum() + module[2](torch.randn(2, 5)).sum()
    loss.backward()
    optimizer.step()
    state = module.state_dict()
    path = _save(tmp_path, {"generator": state, "optimizer": optimizer.state_dict(), "epoch": 3,
                            "tags": {"a", "b"}, "pair": (1.5, None)})
    loaded = load_torch_file(path)
    assert type(loaded) is dict and type(loaded["generator"]) is dict
    assert loaded["epoch"] == 3 and loaded["tags"] == {"a", "b"} and loaded["pair"] == (1.5, None)
    assert list(loaded["generator"]) == list(state)
    for key, tensor in state.items():
        np.testing.assert_array_equal(loaded["generator"][key], tensor.numpy(), err_msg=key)
    group = loaded["optimizer"]["param_groups"][0]
    assert group["betas"] == (0.5, 0.999) and group["lr"] == 1e-3
    first_state = loaded["optimizer"]["state"][0]
    np.testing.assert_array_equal(first_state["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"].numpy())


def test_bfloat16_is_refused_with_a_clear_error(tmp_path):
    path = _save(tmp_path, {"w": torch.ones(3, dtype=torch.bfloat16)})
    with pytest.raises(TorchFileError, match="BFloat16Storage"):
        load_torch_file(path)


class _RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_in_torch_file_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _save(tmp_path, {"generator": {"w": torch.ones(2)}, "payload": _RunsShellCommand(marker)})
    with pytest.raises(UnsafeCheckpointError, match=r"system") as info:
        load_torch_file(path)
    assert path in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not marker.exists()


def test_malicious_pickle_in_hand_made_zip_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pth")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(_RunsShellCommand(marker), protocol=2))
        archive.writestr("evil/byteorder", "little")
    with pytest.raises(UnsafeCheckpointError, match=r"(posix|os)\.system"):
        load_torch_file(path)
    assert not marker.exists()
    # The same guard holds for any callable global, e.g. builtins.eval.
    payload = b"\x80\x02cbuiltins\neval\nX\x0b\x00\x00\x001+1 and 0.5\x85R."
    assert pickle.loads(payload) == 0.5
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", payload)
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.eval"):
        load_torch_file(path)


def test_truncated_file_gives_one_line_error_naming_the_file(tmp_path):
    path = _save(tmp_path, {"w": torch.randn(64, 64)})
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(TorchFileError, match="truncated or corrupt") as info:
        load_torch_file(path)
    assert path in str(info.value) and "\n" not in str(info.value)


def test_corrupt_storage_bytes_are_detected(tmp_path):
    path = _save(tmp_path, {"w": torch.zeros(256)})
    data = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    # Flip a byte inside the stored (uncompressed) storage payload: the CRC no longer matches. The payload starts
    # after the 30-byte local header, the name and the local extra field (torch pads it for alignment).
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    payload_start = info.header_offset + 30 + name_length + extra_length
    assert info.compress_type == zipfile.ZIP_STORED and payload_start + 1024 <= len(data)
    data[payload_start + 100] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(TorchFileError, match="CRC") as info_err:
        load_torch_file(path)
    assert path in str(info_err.value)


def test_legacy_format_and_non_checkpoints(tmp_path):
    legacy = _save(tmp_path, {"w": torch.ones(2)}, name="legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(TorchFileError, match="legacy torch format; re-save with torch>=1.6") as info:
        load_torch_file(legacy)
    assert legacy in str(info.value)

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(TorchFileError, match="not a torch checkpoint"):
        load_torch_file(str(text))

    other_zip = str(tmp_path / "other.zip")
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(TorchFileError, match="not a torch checkpoint"):
        load_torch_file(other_zip)

    with pytest.raises(TorchFileError, match="cannot open"):
        load_torch_file(str(tmp_path / "missing.pth"))
