"""The research-extension examples (examples/*.py) at a reduced budget from tiny random checkpoints, and what each
shows: ANIL's inner loop moves the decoder alone, the new loss term is logged and part of the loss the step
differentiates, the reenactment mp4s are written; `register_task` and the benchmark's run mapping refuse mistakes."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from metaportrait_jax import api
from metaportrait_jax.api.benchmark import meta_training_runs
from metaportrait_jax.config import ConfigError, load_config
from metaportrait_jax.media.video import read_video_frames
from metaportrait_jax.train.checkpoint import save_model
from run_tools import device_environment
from tiny_models import random_variables, save_tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")
FRAMES_PER_CLIP = 8  # r64_tiny
LOSSES = ("warp_perceptual", "perceptual", "eye", "mouth", "generator_gan", "feature_matching", "pixel_l1")


def _config(name: str):
    return load_config(os.path.join(REPO, "configs", f"{name}.py:tiny"))


def _example(name: str):
    """examples/<name>.py imported once per test process (it registers its task on import)."""
    module_name = f"example_{name}"
    if module_name not in sys.modules:
        sys.path.insert(0, EXAMPLES)  # its `import quick_pretrain`
        spec = importlib.util.spec_from_file_location(module_name, os.path.join(EXAMPLES, f"{name}.py"))
        sys.modules[module_name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def _run(script: str, *flags: str) -> str:
    env = device_environment(PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *flags], capture_output=True,
                            text=True, cwd=REPO, env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def root(tmp_path_factory, synthetic) -> str:
    """The examples' --root, its data/ the session's synthetic set (built already: the examples find it)."""
    root = tmp_path_factory.mktemp("examples")
    os.symlink(os.path.dirname(os.path.dirname(os.path.dirname(synthetic))), root / "data")
    return str(root)


@pytest.fixture(scope="module")
def sn_free_start(tmp_path_factory) -> str:
    """A random tiny generator without spectral norm: what meta-training and personalisation start from."""
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("start") / "export"), "synthetic", 64, batch_size=8)


def test_anil_inner_optimiser_moves_the_decoder_alone(perceptual):
    anil = _example("anil")
    trainer = anil.AnilTrainer(_config("meta_train"), perceptual[0])
    params = random_variables(trainer.config.model)["params"]
    grads = jax.tree.map(np.ones_like, params)
    # one program (op by op, every primitive would compile once per parameter shape)
    updates = jax.jit(lambda g, p: trainer.inner_tx.update(g, trainer.inner_tx.init(p), p)[0])(grads, params)
    assert anil.DECODER in updates
    for name, module in updates.items():
        leaves = [np.asarray(u) for u in jax.tree.leaves(module)]
        if name == anil.DECODER:
            assert all(np.all(u != 0) for u in leaves)
        else:
            assert not any(np.any(u) for u in leaves), name


@pytest.mark.slow  # compiling a meta-step takes minutes: the test above checks ANIL's optimiser in the fast suite
def test_anil_example_meta_trains_and_benchmarks(root):
    """From the shipped start (spectral norm in its weights): meta-training starts from it with the spectral norm
    folded in (`convert` tests the folding against torch's remove_spectral_norm), one outer Adam step moves each
    folded weight by at most about the learning rate, and the export has no spectral norm and no discriminator."""
    stdout = _run("anil.py", "--root", root, "--steps", "1", "--runs", "anil", "--persons", "1", "--eval-steps", "0,1")
    assert "anil: 1 meta-steps" in stdout
    with open(os.path.join(root, "anil", "adaptation.json")) as f:
        results = json.load(f)["results"]
    assert sorted(results) == ["anil", "pretrained"]
    assert [row["step"] for row in results["anil"]["mean"]] == [0, 1]
    config, variables, discriminator = api.load_model(os.path.join(root, "anil", "anil", "export"))
    assert config.task == "anil" and not config.model.use_sn and "spectral" not in variables and discriminator is None
    _, folded = api.load_sn_free_generator(_example("quick_pretrain").START_MODEL)
    moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(variables))]
    assert 0 < max(moved) <= config.train.learning_rate * 1.01, (max(moved), config.train.learning_rate)


@pytest.mark.slow  # a full-stage step compiles for minutes
def test_new_loss_example_logs_its_metric(root, tmp_path):
    config = _config("pretrain_full")
    start = str(tmp_path / "sn_start")
    save_model(start, config, random_variables(config.model), network="generator")
    stdout = _run("new_loss.py", "--root", root, "--pretrained", start, "--steps", "2")
    with open(os.path.join(root, "new_loss", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert np.isfinite(row["pixel_l1"]) and row["pixel_l1"] > 0
        # the loss the step differentiates is the sum of the named terms, the new one included
        assert np.isclose(row["generator_loss"], sum(row[k] for k in LOSSES if k in row), rtol=1e-5)
    assert "step 2: pixel_l1" in stdout


@pytest.mark.slow  # a personalisation step compiles for minutes; test_reenact covers api.reenact in the fast suite
def test_personalize_and_animate_example_writes_both_videos(root, sn_free_start):
    stdout = _run("personalize_and_animate.py", "--root", root, "--pretrained", sn_free_start, "--steps", "1")
    for name in ("personalised", "starting"):
        video = read_video_frames(os.path.join(root, "personalize", f"{name}.mp4"))
        assert len(video) == FRAMES_PER_CLIP and video[0].shape == (64, 3 * 64, 3)  # source | driving | result
        assert f"{name} model:" in stdout and "PSNR" in stdout


def test_reenact_writes_the_driving_clip_and_scores_it(root, sn_free_start, tmp_path):
    data = os.path.join(root, "data")
    shown = api.reenact(sn_free_start, data, str(tmp_path / "same.mp4"), person=1, max_frames=5)
    assert shown.frames == 5 and np.isfinite(shown.psnr)
    assert len(read_video_frames(shown.output)) == 5
    other = api.reenact(sn_free_start, data, str(tmp_path / "other.mp4"), person=1, driving_person=0,
                        driving_clip=0, side_by_side=True)
    assert other.psnr is None  # another person's motion: no ground truth
    assert read_video_frames(other.output)[0].shape == (64, 3 * 64, 3)
    with pytest.raises(api.UserError, match="person 1 has clips 0..1, asked for \\[2\\]"):
        api.reenact(sn_free_start, data, str(tmp_path / "x.mp4"), person=1, driving_clip=2)
    with pytest.raises(api.UserError, match="must be an .mp4"):
        api.reenact(sn_free_start, data, str(tmp_path / "x.avi"), person=1)


@pytest.mark.parametrize("name", ["base", "control", "meta"])
def test_each_shipped_model_reproduces_its_recorded_one_shot_psnr(root, tmp_path, name):
    """pretrained/<name> (what the demo personalises from; base is also the examples' start) is a tiny generator of
    its recipe's model, and animates each held-out person as recorded when it was shipped (pretrained/README.md)."""
    shipped = os.path.join(REPO, "pretrained", name)
    config, _, discriminator = api.load_model(shipped)
    expected = _config("pretrain_full" if name == "base" else "meta_train").model
    assert discriminator is None and config.model.to_dict() == expected.to_dict()
    with open(os.path.join(shipped, "one_shot_psnr.json")) as f:
        recorded = json.load(f)
    for person, psnr in recorded.items():
        shown = api.reenact(shipped, os.path.join(root, "data"), str(tmp_path / f"{person}.mp4"), person=int(person),
                            source_clip=0, driving_clip=1)
        # measured: the same value on the AVX-512 and AVX2 paths, 2e-6 dB apart with 8 threads (a pixel rounded to
        # the next uint8 level moves it about that much); 0.01 dB leaves room for thousands of such flips
        assert shown.psnr == pytest.approx(psnr, abs=0.01), person


def test_register_task_refuses_a_taken_name():
    task = dataclasses.replace(api.TASKS["generator"], perceptual_taps="pre_relu")
    api.register_task("test_example_task", task)
    try:
        api.register_task("test_example_task", dataclasses.replace(task))  # an equal task: no-op
        with pytest.raises(ConfigError, match="'test_example_task' is already registered"):
            api.register_task("test_example_task", api.TASKS["meta"])
        with pytest.raises(ConfigError, match="'generator' is already registered"):
            api.register_task("generator", task)
    finally:
        api.TASKS.pop("test_example_task")


def test_benchmark_runs_from_names_or_config_fields():
    config = _config("meta_train")
    assert meta_training_runs(("reptile", "maml"), config) == {"reptile": {"meta.algorithm": "reptile"},
                                                               "maml": {"meta.algorithm": "maml"}}
    fields = {"task": "anil", "meta.algorithm": "fomaml", "meta.inner_steps": 1}
    assert meta_training_runs({"anil": fields}, config) == {"anil": fields}
    for runs, message in (({"anil": {"meta.algoritm": "fomaml"}}, "meta.algoritm not in the config"),
                          ({"x": {"train.steps": 3}}, "sets train.steps itself"),
                          ({"pretrained": {}}, "cannot label a run"),
                          ("reptile", "got the string")):
        with pytest.raises(api.UserError, match=message):
            meta_training_runs(runs, config)
