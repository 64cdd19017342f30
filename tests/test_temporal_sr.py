"""Temporal SR: operators and the whole tiny network against a PyTorch rebuild, parameter counts of the official
network, the official key manifest, converter round trips, clip-vs-frame behaviour at init, windowed inference."""

import json
import math
import os

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from metaportrait_jax.cli import main
from metaportrait_jax.config import load_config
from metaportrait_jax.convert.vgg import perceptual_features
from metaportrait_jax.data.datasets import SyntheticPlan, build_synthetic
from metaportrait_jax.data.official_layout import DataError, write_sample_layout
from metaportrait_jax.data.pipeline import make_iterator, pair_example
from metaportrait_jax.data.sources import TfdsFrames
from metaportrait_jax.data.sr_clips import sr_dataset
from metaportrait_jax.media.video import read_video_frames, to_uint8, write_mp4
from metaportrait_jax.models.generator import BATCH_KEYS, Generator
from metaportrait_jax.convert.official_base import CheckpointMismatchError
from metaportrait_jax.convert.official_sr import convert_official_sr, flax_to_official, official_shapes
from metaportrait_jax.eval import metrics
from metaportrait_jax.eval.enhance import chunk_forward, enhance_clip, sr_stream
from metaportrait_jax.eval.sr_quality import evaluate_sr
from metaportrait_jax.models.config import temporal_sr_config
from metaportrait_jax.models.temporal_sr import ModulatedConv, TemporalSR, init_variables, temporal_depth, upsample2
from metaportrait_jax.models.networks import abstract_variables
from metaportrait_jax.train.checkpoint import load_model, save_model
from metaportrait_jax.train.sr_step import SRTrainer
from metaportrait_jax.train.start import jit_init
from metaportrait_jax.train.tasks import checkpoint_renderer
from official_torch_sr import ModulatedConv2d, OfficialTemporalSR
from tiny_models import random_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join(REPO, "..", "shared", "reference", "official_temporal_sr_state_dict.tsv")
TINY = temporal_sr_config("tiny")


def _config(variant: str = "tiny"):
    return load_config(os.path.join(REPO, "configs", f"temporal_sr.py:{variant}"))


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Every weight random at a sensible scale, the zero-initialised window outputs and noise weights included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("bias"):
                param.copy_(0.1 * noise + (1.0 if name.endswith("modulation.bias") else 0.0))
            elif param.ndim == 1:  # noise strength (multiplies zero noise) or a bias-like vector
                param.copy_(noise)
            else:
                fan_in = math.prod(param.shape[1:]) if param.ndim != 5 else math.prod(param.shape[2:])
                param.copy_(noise / math.sqrt(fan_in))


def _clip(frames: int, size: int, seed: int) -> np.ndarray:
    """A smooth random clip `[1, T, size, size, 3]` in [0, 1]."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((frames, 3, size // 4, size // 4), dtype=np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear").numpy()
    return np.ascontiguousarray(smooth.transpose(0, 2, 3, 1))[None]


@pytest.mark.parametrize("demodulate,upsample,kernel", [(True, False, 3), (True, True, 3), (False, False, 1)])
def test_modulated_conv_equals_torch_per_sample_kernels(demodulate, upsample, kernel):
    torch.manual_seed(0)
    reference = ModulatedConv2d(6, 5, kernel, 8, demodulate=demodulate, upsample=upsample)
    x = torch.randn(3, 6, 9, 9)
    style = torch.randn(3, 8)
    expected = reference(x, style).detach().numpy().transpose(0, 2, 3, 1)
    params = {"modulation": {"kernel": reference.modulation.weight.detach().numpy().T,
                             "bias": reference.modulation.bias.detach().numpy()},
              "kernel": reference.weight.detach().numpy()[0].transpose(2, 3, 1, 0)}
    ours = ModulatedConv(5, kernel, demodulate=demodulate, upsample=upsample).apply(
        {"params": params}, x.numpy().transpose(0, 2, 3, 1), style.numpy())
    np.testing.assert_allclose(np.asarray(ours), expected, atol=2e-5, rtol=1e-5)


def test_official_network_size_and_key_manifest():
    config = temporal_sr_config("official_512")
    params = abstract_variables("temporal_sr", _config("official_512").model)["params"]
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))  # noqa: E731
    assert count(params) == 154_690_396
    assert count(params) - count(params["stylegan_decoder"]) == 124_413_813
    with open(MANIFEST) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip() and not line.startswith("#")]
    manifest = {key: tuple(int(n) for n in shape.split("x")) for key, shape, _, _ in rows}
    parameters = {key: manifest[key] for key, _, _, kind in rows if kind != "buffer"}
    assert official_shapes(config) == parameters
    with torch.device("meta"):  # names and shapes only: nothing is allocated
        reference = OfficialTemporalSR(config.to_dict())
    assert {k: tuple(v.shape) for k, v in reference.state_dict().items()} == manifest


@pytest.fixture(scope="module")
def torch_reference():
    torch.manual_seed(0)
    model = OfficialTemporalSR(TINY.to_dict())
    _randomize(model, 1)
    return model.eval()


def test_tiny_network_and_converter_match_the_torch_rebuild(torch_reference, tmp_path):
    state_dict = torch_reference.state_dict()
    path = str(tmp_path / "temporal_gfpgan.pth")
    torch.save({"params": state_dict}, path)
    assert not convert_official_sr(path, str(tmp_path / "converted"), _config())
    config, variables, _ = load_model(str(tmp_path / "converted"))
    assert config.task == "temporal_sr"

    clip = _clip(5, 32, 0)
    with torch.no_grad():
        expected = torch_reference(torch.from_numpy(clip.transpose(0, 1, 4, 2, 3))).numpy().transpose(0, 1, 3, 4, 2)
    ours = np.asarray(jax.jit(TemporalSR(config.model).apply)(variables, clip))
    assert ours.shape == (1, 5, 64, 64, 3)
    np.testing.assert_allclose(ours, expected, atol=2e-4 * np.abs(expected).max())

    back = flax_to_official(variables)
    buffers = {k for k in state_dict if ".noises." in k}
    assert set(back) == set(state_dict) - buffers
    for key, value in back.items():
        np.testing.assert_array_equal(value, state_dict[key].numpy(), err_msg=key)


def test_gfpgan_weights_start_with_fresh_zero_output_windows(torch_reference, tmp_path, capsys):
    gfpgan = {k: v for k, v in torch_reference.state_dict().items()
              if not k.startswith(("window_down.", "recurrent_forward."))}
    path = str(tmp_path / "GFPGANv1.3.pth")
    torch.save({"params_ema": gfpgan}, path)
    tiny = os.path.join(REPO, "configs", "temporal_sr.py:tiny")
    assert main(["convert", "official-sr", "--checkpoint", path, "--output", str(tmp_path / "gfpgan"),
                 "--config", tiny]) == 0
    assert "they start afresh" in capsys.readouterr().out
    assert main(["convert", "official-sr", "--checkpoint", path, "--output", str(tmp_path / "x"), "--config", tiny,
                 "--key", "params"]) == 2
    assert "no state dict under 'params'" in capsys.readouterr().err
    _, variables, _ = load_model(str(tmp_path / "gfpgan"))
    params = variables["params"]
    for name, sub in params.items():
        if name.startswith(("window_down", "recurrent_forward")):
            assert not np.any(np.asarray(sub["conv2"]["kernel"])) and not np.any(np.asarray(sub["conv2"]["bias"]))
            assert np.any(np.asarray(sub["conv1"]["kernel"]))
    np.testing.assert_array_equal(np.asarray(params["final_linear"]["kernel"]),
                                  gfpgan["final_linear.weight"].numpy().T)


def test_converter_lists_every_mismatch(torch_reference, tmp_path):
    state_dict = dict(torch_reference.state_dict())
    state_dict["extra.weight"] = torch.zeros(3)
    del state_dict["final_conv.bias"]
    state_dict["window_down.0.conv2.weight"] = torch.zeros(1, 2, 3, 3)
    path = str(tmp_path / "bad.pth")
    torch.save({"params": state_dict}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        convert_official_sr(path, str(tmp_path / "out"), _config())
    message = str(error.value)
    assert "unknown keys: extra.weight" in message and "missing keys: final_conv.bias" in message
    assert "window_down.0.conv2.weight (1, 2, 3, 3)" in message
    assert not (tmp_path / "out").exists()


def _perturbed_windows(variables: dict, seed: int) -> dict:
    """The windows' zero output convs made random, so frames really mix."""
    flat = traverse_util.flatten_dict(jax.device_get(variables["params"]))
    rng = np.random.default_rng(seed)
    for path, value in flat.items():
        if path[0].startswith(("window_down", "recurrent_forward")) and path[1] == "conv2":
            flat[path] = (0.02 * rng.standard_normal(value.shape)).astype(np.float32)
    return {"params": traverse_util.unflatten_dict(flat)}


def test_fresh_network_is_frame_by_frame_and_trained_windows_mix_frames():
    variables = init_variables(TINY, jax.random.key(0))
    network = jax.jit(TemporalSR(TINY).apply)
    clip = _clip(4, 32, 1)
    whole = np.asarray(network(variables, clip))
    single = np.concatenate([np.asarray(network(variables, clip[:, t:t + 1])) for t in range(4)], axis=1)
    np.testing.assert_allclose(whole, single, atol=1e-6)
    mixed = _perturbed_windows(variables, 2)
    assert np.abs(np.asarray(network(mixed, clip)) - whole).max() > 1e-3


def test_windowed_inference_equals_the_whole_clip():
    variables = _perturbed_windows(init_variables(TINY, jax.random.key(3)), 4)
    frames = 2 * temporal_depth(TINY) + 8  # interior chunks see real context on both sides
    clip = _clip(frames, 32, 5)
    network = jax.jit(TemporalSR(TINY).apply)
    whole = np.asarray(network(variables, clip))[0]
    forward = chunk_forward(TINY)
    streamed = np.stack(list(enhance_clip(forward, variables, TINY, iter(clip[0]), 4)))
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=2e-5)
    # Independent chunks (the official inference) differ at the borders.
    official = np.concatenate([np.asarray(network(variables, clip[:, s:s + 4]))[0] for s in range(0, frames, 4)])
    assert np.abs(official - whole).max() > 1e-3
    # A video shorter than one chunk and its context.
    short = np.stack(list(enhance_clip(forward, variables, TINY, iter(clip[0, :2]), 4)))
    np.testing.assert_allclose(short, np.asarray(network(variables, clip[:, :2]))[0], atol=2e-5)


@pytest.fixture(scope="session")
def sr_data(tmp_path_factory):
    return build_synthetic(str(tmp_path_factory.mktemp("sr_data")), "r32_sr_tiny")


def _sr_config(sr_data: str, *overrides: str):
    return load_config(os.path.join(REPO, "configs", "temporal_sr.py:tiny"),
                       ["data.source='tfds'", f"data.path={sr_data!r}", *overrides])


def test_synthetic_clips_pair_inputs_with_targets_rendered_at_twice_the_size(sr_data):
    config = _sr_config(sr_data)
    dataset, spec = sr_dataset(config, TfdsFrames(sr_data, "train"))
    batch = next(make_iterator(dataset, spec))
    assert batch["inputs"].shape == (8, 3, 32, 32, 3) and batch["targets"].shape == (8, 3, 64, 64, 3)
    pooled = batch["targets"].reshape(8, 3, 32, 2, 32, 2, 3).mean(axis=(3, 5))
    assert np.mean(np.abs(pooled - batch["inputs"])) < 0.03  # the same scene, finer grid
    assert np.mean(np.abs(batch["inputs"][:, 1:] - batch["inputs"][:, :-1])) > 1e-3  # consecutive frames move


def test_tiny_training_lowers_the_loss_and_keeps_the_decoder_frozen(sr_data):
    config = _sr_config(sr_data, "train.steps=20", "train.learning_rate=2e-3", "train.batch_size=2",
                        "train.clip_length=2", "train.freeze_decoder=True")
    network, params = perceptual_features(config.train.perceptual, taps="pre_relu")
    trainer = SRTrainer(config, network)
    state = jit_init(trainer.init_state)(jax.random.key(0), {"params": params})
    dataset, spec = sr_dataset(config, TfdsFrames(sr_data, "train"))
    iterator = make_iterator(dataset, spec)
    batches = [jax.tree.map(jnp.asarray, next(iterator)) for _ in range(2)]
    step = jax.jit(trainer.step)
    initial = jax.device_get(state.params)
    losses = []
    for index in range(20):
        state, metrics = step(state, batches[index % 2])
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4]), losses
    assert set(metrics) >= {"pixel", "perceptual", "style", "loss", "learning_rate"}
    for before, after in zip(jax.tree.leaves(initial["stylegan_decoder"]),
                             jax.tree.leaves(state.params["stylegan_decoder"])):
        np.testing.assert_array_equal(before, np.asarray(after))
    moved = np.asarray(state.params["window_down_0"]["conv2"]["kernel"])
    assert np.any(moved) and not np.array_equal(np.asarray(state.ema["window_down_0"]["conv2"]["kernel"]), moved)


@pytest.mark.minutes
def test_train_then_enhance_from_the_command_line(sr_data, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    assert main(["train", "--config", os.path.join(REPO, "configs", "temporal_sr.py:tiny"), "--workdir", workdir,
                 "--no-progress", "--config.data.source=tfds", f"--config.data.path={sr_data}",
                 "--config.train.steps=2", "--config.train.clip_length=2", "--config.train.log_every=1",
                 "--config.train.image_every=2"]) == 0
    assert os.path.isdir(os.path.join(workdir, "export")) and os.path.isdir(os.path.join(workdir, "export_ema"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2]
    # Fine-tuning starts from init_from's weights: from the trained export scaled by 1.5 (far from any fresh start),
    # one step of the same program (same recipe; the time budget runs out after the first step) moves each weight
    # and its EMA by at most one Adam step, about the learning rate.
    trained_config, trained, _ = load_model(os.path.join(workdir, "export"))
    start = jax.tree.map(lambda w: np.asarray(w) * 1.5, trained)
    save_model(str(tmp_path / "start"), trained_config, start, network="temporal_sr")
    tuned = str(tmp_path / "tuned")
    assert main(["train", "--config", os.path.join(REPO, "configs", "temporal_sr.py:tiny"), "--workdir", tuned,
                 "--no-progress", "--config.data.source=tfds", f"--config.data.path={sr_data}",
                 "--config.train.steps=2", "--config.train.clip_length=2", "--config.train.log_every=1",
                 "--config.train.image_every=2", "--config.train.max_seconds=1e-9",
                 f"--config.init_from={str(tmp_path / 'start')}"]) == 0
    with open(os.path.join(tuned, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [1]
    for export in ("export", "export_ema"):
        moved = [np.max(np.abs(np.asarray(b) - a))
                 for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(load_model(os.path.join(tuned, export))[1]))]
        assert 0 < max(moved) <= 1.01 * trained_config.train.learning_rate, (export, max(moved))

    # The with/without benchmark: bilinear ×2 is scored against the targets as computed here (up to a uint8 step
    # where jit rounds otherwise); the grid shows bilinear | SR | target rows.
    frames = TfdsFrames(sr_data, "test")
    report = evaluate_sr(os.path.join(workdir, "export"), sr_data, "test", clips=1, grid_path=str(tmp_path / "g.png"))
    first = range(int(frames.clips.start[0]), int(frames.clips.start[0] + frames.clips.length[0]))
    targets = np.stack([frames[i]["image_hr"] for i in first])
    bilinear = to_uint8(np.asarray(upsample2(np.stack([frames[i]["image"] for i in first]).astype(np.float32) / 255)))
    assert report["without"]["psnr_db"] == pytest.approx(float(np.mean(metrics.psnr(bilinear, targets))), rel=1e-4)
    assert set(report["with"]) == {"psnr_db", "lpips", "warping_error"} and report["ground_truth"]["warping_error"] > 0
    grid = imageio.imread(str(tmp_path / "g.png"))
    assert grid.shape == (4 * 64, 3 * 64, 3)
    np.testing.assert_array_equal(grid[:64, 128:], targets[0])
    np.testing.assert_allclose(grid[:64, :64], bilinear[0], atol=1)

    clip = np.stack([frames[i]["image"] for i in range(5)])
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(clip):
        imageio.imwrite(str(folder / f"f{index:03d}.png"), frame)
    write_mp4(str(tmp_path / "clip.mp4"), clip, 25)
    for source, name in ((str(folder), "f002.png"), (str(tmp_path / "clip.mp4"), "00000002.png")):
        out = tmp_path / ("out_" + os.path.basename(source))
        assert main(["enhance", "--checkpoint", os.path.join(workdir, "export"), "--input", source,
                     "--output", str(out), "--chunk", "2"]) == 0
        assert imageio.imread(str(out / name)).shape == (64, 64, 3)
        assert len(read_video_frames(str(out / "out_64.mp4"))) == 5

    # The stream form `animate --source/--driving --sr` uses writes the same frames.
    streamed = list(sr_stream(os.path.join(workdir, "export"), chunk=2)(iter(clip)))
    np.testing.assert_array_equal(streamed[2], imageio.imread(str(tmp_path / "out_frames" / "f002.png")))
    with pytest.raises(DataError, match="frame 0 is 64x64; the model takes 32x32"):
        next(sr_stream(os.path.join(workdir, "export"))(iter([np.zeros((64, 64, 3), np.uint8)])))

    (tmp_path / "notes.txt").write_text("not a video")
    capsys.readouterr()
    for arguments, expected in ((["--input", str(tmp_path / "none")], "none: No such file"),
                                (["--input", str(tmp_path / "notes.txt")], "not a video"),
                                (["--input", str(tmp_path / "clip.mp4"), "--chunk", "0"], None)):
        if expected is None:
            with pytest.raises(SystemExit):
                main(["enhance", "--checkpoint", workdir + "/export", "--output", str(tmp_path / "x"), *arguments])
            continue
        assert main(["enhance", "--checkpoint", workdir + "/export", "--output", str(tmp_path / "x"),
                     *arguments]) == 2
        err = capsys.readouterr().err
        assert err.startswith("metaportrait-jax: error: ") and expected in err and "Traceback" not in err


def test_animate_chains_sr_after_the_base_model(tmp_path, capsys):
    base = load_config(os.path.join(REPO, "configs", "tiny.py"))
    save_model(str(tmp_path / "base"), base, random_variables(base.model), network="generator")
    sr = _config()
    sr.model.update(out_size=128, style_dim=8, unet_channels=(4,) * 6)  # takes the tiny base model's 64² frames
    sr.inference.chunk_frames = 2
    save_model(str(tmp_path / "sr"), sr, init_variables(sr.model, jax.random.key(1)), network="temporal_sr")
    data = str(tmp_path / "data")
    names = write_sample_layout(data)
    out = tmp_path / "out"
    assert main(["animate", "--checkpoint", str(tmp_path / "base"), "--official-data", data, "--output", str(out),
                 "--sr", str(tmp_path / "sr")]) == 0
    for name in names:
        assert imageio.imread(str(out / "sr_128" / name)).shape == (128, 128, 3)
    assert len(read_video_frames(str(out / "sr_128" / "out_128.mp4"))) == len(names)
    assert main(["animate", "--checkpoint", str(tmp_path / "base"), "--official-data", data, "--output",
                 str(tmp_path / "o2"), "--sr", str(tmp_path / "base")]) == 2
    assert "holds a generator network, not a temporal_sr one" in capsys.readouterr().err


def test_base_model_outputs_can_be_the_training_inputs(tmp_path):
    data = build_synthetic(str(tmp_path / "data"), SyntheticPlan(64, train_identities=1, test_identities=0,
                                                                 frames_per_clip=3, target_scale=2))
    base = load_config(os.path.join(REPO, "configs", "tiny.py"), ["model.topology='synthetic'", "model.id_dim=64"])
    save_model(str(tmp_path / "base"), base, random_variables(base.model), network="generator")
    config = _sr_config(data, "data.input_source='base_model'", f"data.base_checkpoint={str(tmp_path / 'base')!r}",
                        "train.batch_size=1")
    config.model.update(out_size=128, style_dim=8, unet_channels=(4,) * 6)
    frames = TfdsFrames(data, "train")
    dataset, spec = sr_dataset(config, frames, render=checkpoint_renderer(str(tmp_path / "base"), 64))
    batch = next(make_iterator(dataset, spec))
    assert batch["inputs"].shape == (1, 3, 64, 64, 3) and batch["targets"].shape == (1, 3, 128, 128, 3)
    variables = load_model(str(tmp_path / "base"))[1]
    errors = []
    for clip in range(2):  # the batch holds one of the two clips: its first frame as the base model renders it
        source = frames[int(frames.clips.source[clip])]
        example = pair_example(source, frames[int(frames.clips.start[clip])], source["identity"], frames.topology)
        prediction = Generator(base.model).apply(variables, {k: example[k][None] for k in BATCH_KEYS})["prediction"]
        quantised = np.floor(np.clip(np.asarray(prediction[0]), 0, 1) * 255) / 255  # truncated, as PNGs are
        errors.append(np.abs(batch["inputs"][0, 0] - quantised).max())
    assert min(errors) <= 1 / 255 + 1e-6, errors
    config.data.base_checkpoint = ""
    with pytest.raises(DataError, match="needs data.base_checkpoint"):
        sr_dataset(config, frames)
