"""FID: the Inception-v3 port and its .pth loader against torchvision's and pytorch-fid's own forwards on random
weights the test makes, and the Fréchet distance against a direct scipy computation."""

import functools
import os

import jax
import numpy as np
import pytest
import scipy.linalg

from metaportrait_jax.convert.inception import (detect_variant, expected_state_dict_shapes, inception_to_flax,
                                                load_inception)
from metaportrait_jax.convert.official_base import CheckpointMismatchError
from metaportrait_jax.convert.torch_reader import UnsafeCheckpointError
from metaportrait_jax.eval import metrics
from torchvision_import import import_torchvision

torch = pytest.importorskip("torch")


def _random_inception(classes: int, seed: int):
    """torchvision's Inception3 (no aux head) with He-normal convs and non-trivial batch-norm statistics, so that
    every layer matters and activations stay O(1) through all 94 convs."""
    torchvision = import_torchvision()
    torch.manual_seed(seed)
    model = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=classes)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(0, (2 / module.weight[0].numel()) ** 0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """{variant: (.pth path, state dict)}: 1008 classes is pytorch-fid's layout, 1000 torchvision's."""
    folder = tmp_path_factory.mktemp("inception")
    made = {}
    for variant, classes, seed in (("pytorch_fid", 1008, 0), ("torchvision", 1000, 1)):
        state_dict = _random_inception(classes, seed).state_dict()
        path = str(folder / f"{variant}.pth")
        torch.save(state_dict, path)
        made[variant] = path, state_dict
    return made


def _images(size: int, count: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(count, size, size, 3)).astype(np.float32)


@functools.cache
def _feature_function(path: str, resize: bool):
    module, params = load_inception(path)
    forward = jax.jit(module.clone(resize=resize).apply)  # one compilation per weights file, resize and shape
    return lambda images: np.asarray(forward({"params": params}, images))


def _ours(path: str, images: np.ndarray, resize: bool) -> np.ndarray:
    return _feature_function(path, resize)(images)


def test_torchvision_variant_matches_torchvision_forward(weights):
    path, state_dict = weights["torchvision"]
    model = _random_inception(1000, 1)
    model.fc = torch.nn.Identity()
    images = _images(80)
    with torch.no_grad():
        # torchvision with transform_input turns ImageNet-normalised input into 2x - 1: feed that directly.
        reference = model(torch.from_numpy(2 * images - 1).permute(0, 3, 1, 2)).numpy()
    ours = _ours(path, images, resize=False)
    assert ours.shape == (2, 2048)
    np.testing.assert_allclose(ours, reference, atol=2e-5 * np.abs(reference).max())


@pytest.mark.parametrize("size,resize", [(80, False), (48, True)])
def test_pytorch_fid_variant_matches_pytorch_fid(weights, monkeypatch, size, resize):
    import_torchvision()
    pytorch_fid = pytest.importorskip("pytorch_fid.inception")
    path, state_dict = weights["pytorch_fid"]
    # pytorch-fid downloads its weights; hand it ours instead.
    monkeypatch.setattr(pytorch_fid, "load_state_dict_from_url", lambda *args, **kwargs: state_dict)
    network = pytorch_fid.InceptionV3([3], resize_input=resize, normalize_input=True).eval()
    images = _images(size)
    with torch.no_grad():
        reference = network(torch.from_numpy(images).permute(0, 3, 1, 2))[0][:, :, 0, 0].numpy()
    ours = _ours(path, images, resize=resize)
    np.testing.assert_allclose(ours, reference, atol=2e-5 * np.abs(reference).max())
    # The variants' pooling differences are visible at this size: the wrong variant does not match.
    module, params = load_inception(path, "torchvision")
    wrong = np.asarray(module.clone(resize=resize).apply({"params": params}, images))
    assert np.abs(wrong - reference).max() > 1e-3 * np.abs(reference).max()


def test_variant_is_told_by_the_classifier_size(weights):
    assert detect_variant(weights["pytorch_fid"][1], "x") == "pytorch_fid"
    assert detect_variant(weights["torchvision"][1], "x") == "torchvision"
    bad = {k: v for k, v in weights["torchvision"][1].items() if not k.startswith("fc.")}
    with pytest.raises(CheckpointMismatchError, match="--fid-variant"):
        detect_variant(bad, "x.pth")


def test_the_port_reads_every_torchvision_tensor_but_the_classifier(weights):
    state_dict = weights["torchvision"][1]
    used = {k: tuple(v.shape) for k, v in state_dict.items() if not k.startswith("fc.")
            and not k.endswith("num_batches_tracked")}
    assert expected_state_dict_shapes() == used and len(used) == 94 * 5


def test_mismatched_weights_list_their_keys(weights):
    state_dict = {k: v.numpy() for k, v in weights["pytorch_fid"][1].items()}
    del state_dict["Mixed_6b.branch7x7_2.bn.running_var"]
    state_dict["Mixed_7c.branch_pool.conv.weight"] = np.zeros((192, 2048, 3, 3), np.float32)
    with pytest.raises(CheckpointMismatchError) as error:
        inception_to_flax(state_dict, "w.pth")
    message = str(error.value)
    assert "1 missing keys: Mixed_6b.branch7x7_2.bn.running_var" in message
    assert "Mixed_7c.branch_pool.conv.weight (192, 2048, 3, 3) (expected (192, 2048, 1, 1))" in message


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/metaportrait_fid_pwned",))


def test_code_carrying_weights_are_refused_unrun(tmp_path):
    path = str(tmp_path / "evil.pth")
    torch.save({"fc.weight": torch.zeros(1008, 2048), "x": _Exploit()}, path)
    with pytest.raises(UnsafeCheckpointError):
        load_inception(path)
    assert not os.path.exists("/tmp/metaportrait_fid_pwned")


def test_frechet_distance_matches_scipy_and_vanishes_on_the_same_set():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(0.3, 1.2, size=(200, 16)) @ rng.normal(size=(16, 16))
    mean_a, cov_a = metrics.feature_statistics(a)
    mean_b, cov_b = metrics.feature_statistics(b)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    direct = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)
    np.testing.assert_allclose(metrics.frechet_distance(mean_a, cov_a, mean_b, cov_b), direct, rtol=1e-8)
    assert abs(metrics.frechet_distance(mean_a, cov_a, mean_a, cov_a)) < 1e-8
    # Fewer samples than dimensions: rank-deficient covariances still give a finite, real distance.
    few = metrics.feature_statistics(a[:5])
    assert np.isfinite(metrics.frechet_distance(*few, mean_b, cov_b))
    # From the features directly: both routes (small sets: nuclear norm of A·Bᵀ; large: covariances) agree.
    for x, y in ((a, b), (a[:5], b), (a[:12], b[:9])):
        np.testing.assert_allclose(metrics.frechet_distance_of_features(x, y), metrics.frechet_distance(
            *metrics.feature_statistics(x), *metrics.feature_statistics(y)), rtol=1e-7, atol=1e-9)


def test_fid_of_a_set_against_itself_is_zero(weights):
    features = _ours(weights["pytorch_fid"][0], _images(48, count=6, seed=3), resize=True)
    scale = np.sum(np.var(features, axis=0))
    assert abs(metrics.frechet_distance_of_features(features, features)) < 1e-9 * scale
    other = _ours(weights["pytorch_fid"][0], _images(48, count=6, seed=4), resize=True)
    assert metrics.frechet_distance_of_features(features, other) > 1e-3 * scale
