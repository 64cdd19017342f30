"""Official torch checkpoint <-> our Flax trees: round trips, golden forwards against the torch reference, SN folding,
error paths. The torch reference (`official_torch.py`) has the official module tree and state-dict keys."""

import logging
import math
import os

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util

from metaportrait_jax.config import load_config, save_config
from metaportrait_jax.convert.official_base import (CheckpointMismatchError, convert_official_base,
                                                    detect_spectral_norm, flax_to_official_discriminator,
                                                    flax_to_official_generator, official_to_flax_discriminator,
                                                    official_to_flax_generator)
from metaportrait_jax.models.discriminator import Discriminator
from metaportrait_jax.models.generator import Generator
from metaportrait_jax.models.spectral_fold import fold_spectral_norm
from metaportrait_jax.train.checkpoint import load_model, save_model
from official_torch import OfficialDiscriminator, OfficialGenerator, remove_spectral_norm_all

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAZE_ROWS = slice(29, 37)
GOLDEN_TOLERANCE = 1e-4


def _config(variant: str):
    return load_config(os.path.join(REPO, "configs", f"{variant}.py"))


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Random weights of sensible scale everywhere, norms and biases included, so no term is trivially zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                param.copy_(0.1 * noise)
            elif param.ndim in (1, 3):  # InstanceNorm / LayerNorm2d affine weight
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith("adain.style.linear.weight_orig"):  # EqualLR: scaled by sqrt(2 / fan_in) at run time
                param.copy_(noise)
            else:
                fan_in = param[0].numel() if name != "SPDAE_G.conv1.weight_orig" else param.shape[0]
                param.copy_(noise / math.sqrt(fan_in))


def _inputs(config, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random NHWC inputs: a smooth RGB source, sparse line images in [0, 1], a mouth box, 58 landmarks, an identity.

    The source is smooth like a photo: a pixel-noise image would turn float32 round-off in the flow (~1e-6) into
    ~1e-4 errors in the warped image and hide real differences behind that noise floor.
    """
    rng = np.random.default_rng(seed)
    size = config.model.image_size

    def lines():
        return ((rng.random((batch, size, size, 3)) > 0.85) * rng.random((batch, size, size, 3))).astype(np.float32)

    coarse = torch.from_numpy(rng.random((batch, 3, size // 8, size // 8), dtype=np.float32))
    source = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear").numpy().transpose(0, 2, 3, 1)
    mouth = np.zeros((batch, size, size, 1), np.float32)
    mouth[:, size // 2: size * 3 // 4, size // 4: size * 3 // 4] = 1.0
    return dict(source=np.ascontiguousarray(source), source_line=lines(),
                driving_line=lines(), mouth_mask=mouth,
                driving_ldmk=rng.uniform(-0.8, 0.8, (batch, 58, 2)).astype(np.float32),
                source_id=rng.standard_normal((batch, config.model.id_dim)).astype(np.float32))


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _torch_forward(model: OfficialGenerator, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = model(_nchw(inputs["source"]), _nchw(inputs["source_line"]), _nchw(inputs["driving_line"]),
                torch.from_numpy(inputs["driving_ldmk"]), _nchw(inputs["mouth_mask"]),
                torch.from_numpy(inputs["source_id"]), stage="Full")
    return {k: v.detach().numpy() for k, v in out.items()}


def _torch_outputs_nhwc(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(prediction=out["prediction"].transpose(0, 2, 3, 1), deformed=out["deformed"].transpose(0, 2, 3, 1),
                deformation=out["deformation"], occlusion_map=out["occlusion_map"].transpose(0, 2, 3, 1))


def _flax_forward(config, variables, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    batch = dict(source=inputs["source"], source_line=inputs["source_line"], driving_line=inputs["driving_line"],
                 mouth_mask=inputs["mouth_mask"], driving_gaze=inputs["driving_ldmk"][:, GAZE_ROWS],
                 source_id=inputs["source_id"])
    out = jax.jit(Generator(config.model).apply)(variables, batch)  # one compile beats op-by-op dispatch here
    return {k: np.asarray(out[k]) for k in ("prediction", "deformed", "deformation", "occlusion_map")}


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def _trained_reference(config, seed: int, batch: int) -> OfficialGenerator:
    """Randomised reference whose SN u, v went through two training-mode power iterations."""
    torch.manual_seed(seed)
    model = OfficialGenerator(config.model.to_dict())
    _randomize(model, seed)
    model.train()
    with torch.no_grad():
        for step in range(2):
            _torch_forward(model, _inputs(config, batch, seed + 100 + step))
    model.eval()
    return model


def _reference_discriminator(config, seed: int) -> OfficialDiscriminator:
    torch.manual_seed(seed)
    model = OfficialDiscriminator(config.model.to_dict())
    _randomize(model, seed)
    return model.eval()


def _state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny():
    config = _config("tiny")
    generator = _trained_reference(config, seed=0, batch=2)
    discriminator = _reference_discriminator(config, seed=1)
    return config, generator, discriminator


def test_checkpoint_round_trip_is_exact(tiny, tmp_path):
    config, generator, discriminator = tiny
    path = str(tmp_path / "ckpt_base.pth.tar")
    torch.save({"generator": generator.state_dict(), "discriminator": discriminator.state_dict(), "epoch": 3}, path)
    convert_official_base(path, str(tmp_path / "converted"), config)
    loaded_config, generator_variables, discriminator_variables = load_model(str(tmp_path / "converted"))
    assert loaded_config.model.use_sn is True
    assert set(generator_variables) == {"params", "spectral"}
    for original, restored in ((_state_dict_numpy(generator), flax_to_official_generator(generator_variables,
                                                                                          loaded_config)),
                               (_state_dict_numpy(discriminator),
                                flax_to_official_discriminator(discriminator_variables, loaded_config))):
        assert set(restored) == set(original)
        for key, array in original.items():
            assert restored[key].shape == array.shape, key
            np.testing.assert_array_equal(restored[key], array, err_msg=key)


def test_ladder_fc_rows_follow_nhwc_flattening(tiny):
    config, generator, _ = tiny
    state = _state_dict_numpy(generator)
    kernel = official_to_flax_generator(state, config)["params"]["ladder_network"]["fc"]["kernel"]
    weight = state["ladder_network.fc.weight"]
    channels = config.model.ladder.widths[-1]
    side = config.model.image_size // 2 ** len(config.model.ladder.widths)
    rng = np.random.default_rng(0)
    for _ in range(50):
        c, y, x, o = (int(rng.integers(n)) for n in (channels, side, side, weight.shape[0]))
        assert kernel[(y * side + x) * channels + c, o] == weight[o, c * side * side + y * side + x]


def test_golden_generator_and_discriminator_tiny(tiny):
    config, generator, discriminator = tiny
    variables = official_to_flax_generator(_state_dict_numpy(generator), config)
    inputs = _inputs(config, batch=2, seed=7)
    with torch.no_grad():
        reference = _torch_outputs_nhwc(_torch_forward(generator, inputs))
    ours = _flax_forward(config, variables, inputs)
    errors = {k: _relative_error(ours[k], reference[k]) for k in reference}
    print("tiny generator max relative errors:", errors)
    assert all(e <= GOLDEN_TOLERANCE for e in errors.values()), errors

    _check_discriminator(config, discriminator, inputs["source"], "tiny")


def _check_discriminator(config, discriminator: OfficialDiscriminator, image: np.ndarray, label: str) -> None:
    variables = official_to_flax_discriminator(_state_dict_numpy(discriminator), config)
    with torch.no_grad():
        reference_features, reference_logits = discriminator(_nchw(image))
    features, logits = Discriminator(config.model).apply(variables, image)
    errors = {"logits": _relative_error(np.asarray(logits), reference_logits.numpy().transpose(0, 2, 3, 1))}
    assert len(features) == len(reference_features)
    for i, (ours, reference) in enumerate(zip(features, reference_features)):
        errors[f"features_{i}"] = _relative_error(np.asarray(ours), reference.numpy().transpose(0, 2, 3, 1))
    print(f"{label} discriminator max relative errors:", errors)
    assert all(e <= GOLDEN_TOLERANCE for e in errors.values()), errors


def test_sn_free_checkpoint_converts_without_sn_and_matches_torch(tiny, tmp_path, caplog):
    config, generator, _ = tiny
    sn_state = _state_dict_numpy(generator)
    sn_free = remove_spectral_norm_all(_trained_reference(config, seed=0, batch=2))
    sn_free_state = _state_dict_numpy(sn_free)
    assert not detect_spectral_norm(sn_free_state) and detect_spectral_norm(sn_state)
    path = str(tmp_path / "meta.pth")
    torch.save(sn_free.state_dict(), path)  # a bare generator state dict is accepted too
    with caplog.at_level(logging.WARNING):
        convert_official_base(path, str(tmp_path / "converted"), config)
    assert "SN-free checkpoint; setting config.model.use_sn=False" in caplog.text
    loaded_config, variables, discriminator_variables = load_model(str(tmp_path / "converted"))
    assert loaded_config.model.use_sn is False and discriminator_variables is None
    assert set(variables) == {"params"}
    inputs = _inputs(config, batch=2, seed=8)
    with torch.no_grad():
        reference = _torch_outputs_nhwc(_torch_forward(sn_free, inputs))
    ours = _flax_forward(loaded_config, variables, inputs)
    errors = {k: _relative_error(ours[k], reference[k]) for k in reference}
    print("tiny SN-free generator max relative errors:", errors)
    assert all(e <= GOLDEN_TOLERANCE for e in errors.values()), errors


def test_fold_spectral_norm_equals_torch_remove_spectral_norm(tiny):
    config, generator, _ = tiny
    variables = official_to_flax_generator(_state_dict_numpy(generator), config)
    folded = fold_spectral_norm(variables, config.model)
    assert set(folded) == {"params"}
    sn_free_config = config.copy_and_resolve_references()
    sn_free_config.model.use_sn = False
    expected = official_to_flax_generator(
        _state_dict_numpy(remove_spectral_norm_all(_trained_reference(config, seed=0, batch=2))), sn_free_config)
    flat_folded = traverse_util.flatten_dict(folded["params"])
    flat_expected = traverse_util.flatten_dict(expected["params"])
    flat_original = traverse_util.flatten_dict(variables["params"])
    assert set(flat_folded) == set(flat_expected)
    sn_kernels = {(*path[:-1], "kernel") for path in traverse_util.flatten_dict(variables["spectral"])}
    widths = config.model.ladder.widths
    assert len(sn_kernels) == len(widths) + 1 + 2 + 3 * 4  # ladder, seed conv, head_0, 4 up blocks (tiny: no middle)
    for path, value in flat_expected.items():
        np.testing.assert_allclose(flat_folded[path], value, rtol=2e-6, atol=1e-8, err_msg=str(path))
        # Only the SN'd kernels change; everything else is passed through untouched.
        assert np.array_equal(flat_folded[path], flat_original[path]) == (path not in sn_kernels), path


def test_mismatched_state_dicts_are_listed_together(tiny):
    config, generator, _ = tiny
    state = _state_dict_numpy(generator)
    del state["fuse_high_res.bias"]
    del state["SPDAE_G.up_0.conv_s.weight_v"]
    state["SPDAE_G.extra_layer.weight"] = np.zeros((3, 3), np.float32)
    state["feature_encoder.encoder.down_blocks.0.norm.running_mean"] = np.zeros(4, np.float32)
    state["ladder_network.layer2.0.weight_orig"] = state["ladder_network.layer2.0.weight_orig"][:, :-1]
    with pytest.raises(CheckpointMismatchError) as info:
        official_to_flax_generator(state, config)
    message = str(info.value)
    for needle in ("2 unknown keys", "SPDAE_G.extra_layer.weight", "running_mean",
                   "2 missing keys", "fuse_high_res.bias", "SPDAE_G.up_0.conv_s.weight_v",
                   "1 mis-shaped keys", "ladder_network.layer2.0.weight_orig"):
        assert needle in message, (needle, message)

    sn_free_config = config.copy_and_resolve_references()
    sn_free_config.model.use_sn = False
    with pytest.raises(CheckpointMismatchError, match="use_sn=True"):
        official_to_flax_generator(_state_dict_numpy(generator), sn_free_config)


def test_load_model_rejects_non_checkpoints(tiny, tmp_path):
    config, generator, _ = tiny
    with pytest.raises(ValueError, match="not a metaportrait-jax model checkpoint .no such directory"):
        load_model(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a metaportrait-jax model checkpoint .no config.json"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "config_only").mkdir()
    save_config(config, str(tmp_path / "config_only" / "config.json"))
    with pytest.raises(ValueError, match="no model/ directory"):
        load_model(str(tmp_path / "config_only"))
    (tmp_path / "config_only" / "model").mkdir()
    (tmp_path / "config_only" / "model" / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="model/ holds no Orbax checkpoint"):
        load_model(str(tmp_path / "config_only"))

    # A real checkpoint whose config.json describes another architecture.
    variables = official_to_flax_generator(_state_dict_numpy(generator), config)
    save_model(str(tmp_path / "saved"), config, variables, network="generator")
    other = config.copy_and_resolve_references()
    other.model.spade.conv_dim = 16
    save_config(other, str(tmp_path / "saved" / "config.json"))
    with pytest.raises(ValueError, match="do not fit the model"):
        load_model(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="already holds a model checkpoint"):
        save_model(str(tmp_path / "saved"), config, variables, network="generator")


def test_convert_refuses_a_checkpoint_without_a_generator(tmp_path):
    path = str(tmp_path / "optimizer_only.pth")
    torch.save({"optimizer": {"lr": 1e-3}, "epoch": 1}, path)
    with pytest.raises(CheckpointMismatchError, match="neither a {'generator': ...} checkpoint nor a bare state dict"):
        convert_official_base(path, str(tmp_path / "out"), _config("tiny"))


@pytest.mark.slow
def test_golden_generator_and_discriminator_official_256():
    config = _config("official_256")
    generator = _trained_reference(config, seed=3, batch=1)
    variables = official_to_flax_generator(_state_dict_numpy(generator), config)
    inputs = _inputs(config, batch=1, seed=9)
    with torch.no_grad():
        reference = _torch_outputs_nhwc(_torch_forward(generator, inputs))
    ours = _flax_forward(config, variables, inputs)
    errors = {k: _relative_error(ours[k], reference[k]) for k in reference}
    print("official_256 generator max relative errors:", errors)
    assert all(e <= GOLDEN_TOLERANCE for e in errors.values()), errors
    _check_discriminator(config, _reference_discriminator(config, seed=4), inputs["source"], "official_256")
