"""The README's main command end to end with a reduced budget: every stage runs, the three outputs are written and
meta-training starts from the full stage's model with its spectral norm folded in; (slow) a rerun, which resumes the
finished training runs, reproduces the personalisation results."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from metaportrait_jax.media.video import read_video_frames
from metaportrait_jax.train.checkpoint import load_model, load_sn_free_generator
from run_tools import device_environment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64  # the demo's tiny model


def _demo(output: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "metaportrait_jax.cli", "demo", "--output", output, "--warp-steps", "2",
               "--full-steps", "2", "--meta-steps", "1", "--meta-tasks", "1", "--personalize-steps", "2",
               "--persons", "1", "--batch-size", "2"]
    env = device_environment()  # one CPU device, as a user has
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _without_wall_time(results: dict) -> dict:
    return {start: [{k: v for k, v in row.items() if "second" not in k} for row in curve["mean"]]
            for start, curve in results.items()}


def _check_outputs(output: str, stdout: str) -> dict:
    """The demo's stages ran and its outputs are written; returns the personalisation results."""
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert stage in stdout
    assert f"demo outputs in {output}" in stdout
    video = read_video_frames(os.path.join(output, "animation.mp4"))
    assert len(video) > 1 and video[0].shape == (SIZE, 4 * SIZE, 3)  # one person: source | driving | two results
    assert os.path.getsize(os.path.join(output, "adaptation.png")) > 0
    with open(os.path.join(output, "metrics.md")) as f:
        metrics = f.read()
    for row in ("pretrained, one-shot", "meta-trained, personalised 2 steps", "| total |"):
        assert row in metrics
    with open(os.path.join(output, "adaptation.json")) as f:
        results = json.load(f)["results"]
    assert [row["step"] for row in results["meta-trained"]["mean"]] == [0, 1, 2]
    return results


def _check_meta_start(output: str) -> None:
    """The meta-trained model (one meta-step) starts from the full stage's spectral-norm model, folded (the folding
    itself equals torch's remove_spectral_norm: tests/test_convert_official_base.py), and is exported without
    spectral norm: one outer Adam step moved the folded weights, each by at most about the learning rate."""
    full_config, full_variables, _ = load_model(os.path.join(output, "full", "export"))
    assert full_config.model.use_sn and "spectral" in full_variables
    config, variables, discriminator = load_model(os.path.join(output, "meta", "export"))
    assert not config.model.use_sn and "spectral" not in variables and discriminator is None
    _, folded = load_sn_free_generator(os.path.join(output, "full", "export"))
    moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(variables))]
    assert 0 < max(moved) <= config.train.learning_rate * 1.01, (max(moved), config.train.learning_rate)


@pytest.mark.minutes
def test_demo_writes_its_outputs(tmp_path):
    output = str(tmp_path / "demo")
    _check_outputs(output, _demo(output).stdout)
    _check_meta_start(output)


# The rerun re-proves resuming finished runs (tests/test_train.py) and deterministic personalisation
# (tests/test_meta_train.py) through the demo: slow suite.
@pytest.mark.slow
def test_a_demo_rerun_resumes_and_reproduces_its_results(tmp_path):
    output = str(tmp_path / "demo")
    results = _check_outputs(output, _demo(output).stdout)
    second = _demo(output)
    assert "resumed from" in second.stdout
    with open(os.path.join(output, "adaptation.json")) as f:
        assert _without_wall_time(json.load(f)["results"]) == _without_wall_time(results)
