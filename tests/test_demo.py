"""The README's main command end to end with a reduced budget: from the shipped models, every stage runs and the
outputs are written; (slow) from scratch, every training stage runs too, and a rerun, which resumes the finished
training runs, reproduces the personalisation results."""

import json
import os
import subprocess
import sys

import pytest

from metaportrait_jax.media.video import read_video_frames
from run_tools import device_environment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64  # the demo's tiny model
FROM_SCRATCH = ["--from-scratch", "--warp-steps", "2", "--full-steps", "2", "--meta-steps", "1", "--meta-tasks", "1"]


def _demo(output: str, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "metaportrait_jax.cli", "demo", "--output", output, "--personalize-steps", "2",
               "--persons", "1", "--batch-size", "2", *flags]
    env = device_environment()  # one CPU device, as a user has
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _without_wall_time(results: dict) -> dict:
    return {start: [{k: v for k, v in row.items() if "second" not in k} for row in curve["mean"]]
            for start, curve in results.items()}


def _check_outputs(output: str, stdout: str, stages: int, starts: tuple[str, ...]) -> dict:
    """The demo's stages ran and its outputs are written; returns the personalisation results."""
    for stage in range(1, stages + 1):
        assert f"{stage}/{stages}" in stdout
    assert f"demo outputs in {output}" in stdout
    video = read_video_frames(os.path.join(output, "animation.mp4"))
    assert len(video) > 1 and video[0].shape == (SIZE, 4 * SIZE, 3)  # one person: source | driving | two results
    for name in ("adaptation.png", "losses.png", "animation.png"):
        assert os.path.getsize(os.path.join(output, name)) > 0
    with open(os.path.join(output, "metrics.md")) as f:
        metrics = f.read()
    for row in ("source copy (no motion)", *(f"{start}, one-shot" for start in starts),
                *(f"{start}, personalised 2 steps" for start in starts), "| total |"):
        assert row in metrics
    with open(os.path.join(output, "adaptation.json")) as f:
        results = json.load(f)["results"]
    assert sorted(results) == sorted(starts)
    assert all([row["step"] for row in results[start]["mean"]] == [0, 1, 2] for start in starts)
    return results


@pytest.mark.minutes
def test_demo_from_the_shipped_models_writes_its_outputs(tmp_path):
    output = str(tmp_path / "demo")
    _check_outputs(output, _demo(output).stdout, 2, ("pretrained", "control", "meta-trained"))


def test_demo_refuses_config_overrides_without_from_scratch(tmp_path):
    result = subprocess.run([sys.executable, "-m", "metaportrait_jax.cli", "demo", "--output", str(tmp_path / "d"),
                             "--config.train.learning_rate=1"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "--from-scratch" in result.stderr and "Traceback" not in result.stderr


# From scratch, the demo trains with the recipes whose stages tests/test_train.py (warp, full from warp) and
# tests/test_meta_train.py (meta from the folded full model) check one by one; the rerun re-proves resuming finished
# runs and deterministic personalisation: slow suite.
@pytest.mark.slow
def test_a_demo_from_scratch_reruns_resuming_and_reproducing_its_results(tmp_path):
    output = str(tmp_path / "demo")
    results = _check_outputs(output, _demo(output, *FROM_SCRATCH).stdout, 5, ("pretrained", "meta-trained"))
    second = _demo(output, *FROM_SCRATCH)
    assert "resumed from" in second.stdout
    with open(os.path.join(output, "adaptation.json")) as f:
        assert _without_wall_time(json.load(f)["results"]) == _without_wall_time(results)
