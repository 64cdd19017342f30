"""`export` and examples/run_exported.py: the exported forward, run without Flax or this package, writes the frames
`animate --official-data` writes (uint8, exactly); the artifact holds cpu, cuda and tpu lowerings; bad input ends
with one line naming the file."""

import os
import subprocess
import sys

import imageio.v2 as imageio
import jax
import numpy as np
import pytest

from metaportrait_jax.cli import main
from metaportrait_jax.data.official_layout import write_sample_layout
from metaportrait_jax.eval.export import ExportError, _box_mask, _check_platforms, load_exported
from metaportrait_jax.ops.landmark_maps import box_mask
from run_tools import device_environment
from tiny_models import save_tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "examples", "run_exported.py")


def _run_runner(*args: str) -> subprocess.CompletedProcess:
    """The runner in a subprocess with this process's 8 fake CPU devices: XLA:CPU partitions convolutions by its
    device count, so 1 and 8 devices differ by ~2e-6, which can move a truncated uint8 pixel by one level; with the
    same XLA environment the frames must be identical. `-X importtime` lists every module the runner imports (on
    stderr): the test checks that Flax and ours are not among them."""
    return subprocess.run([sys.executable, "-X", "importtime", RUNNER, *args], capture_output=True, text=True,
                          env=device_environment(8), cwd=REPO, timeout=600)


def test_runner_frames_equal_animate_official(tmp_path, capsys):
    checkpoint = save_tiny_checkpoint(str(tmp_path / "ckpt"), "dense669", 32, batch_size=2)
    data = str(tmp_path / "data")
    names = write_sample_layout(data)  # 5 frames: the last batch of 2 is padded
    artifact = str(tmp_path / "model.npz")
    assert main(["export", "--checkpoint", checkpoint, "--output", artifact]) == 0
    assert "cpu, cuda, tpu" in capsys.readouterr().out
    header, exported, weights, _ = load_exported(artifact)
    assert exported.platforms == ("cpu", "cuda", "tpu")
    assert header["batch_size"] == 2 and header["image_size"] == 64 and len(weights) == header["weights"]

    reference = str(tmp_path / "animate")
    assert main(["animate", "--checkpoint", checkpoint, "--official-data", data, "--output", reference,
                 "--batch-size", "2"]) == 0
    out = str(tmp_path / "exported")
    result = _run_runner(artifact, "--data", data, "--output", out)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "jax" in imported and not imported & {"flax", "metaportrait_jax"}
    for name in names:
        mine, theirs = imageio.imread(os.path.join(out, name)), imageio.imread(os.path.join(reference, name))
        assert mine.dtype == theirs.dtype == np.uint8
        np.testing.assert_array_equal(mine, theirs, err_msg=name)


def test_bad_inputs_give_one_line_naming_the_file(tmp_path, capsys):
    not_artifact = tmp_path / "model.npz"
    not_artifact.write_bytes(b"not a zip")
    result = _run_runner(str(not_artifact), "--data", str(tmp_path), "--output", str(tmp_path / "out"))
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2 and len(errors) == 1 and str(not_artifact) in errors[0], result.stderr[-2000:]
    assert "not a metaportrait-jax export" in errors[0]

    cuda_only = str(tmp_path / "cuda.npz")
    assert main(["export", "--checkpoint", save_tiny_checkpoint(str(tmp_path / "ckpt"), "dense669", 32),
                 "--output", cuda_only, "--platforms", "cuda"]) == 0
    result = _run_runner(cuda_only, "--data", str(tmp_path), "--output", str(tmp_path / "out"))
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2 and len(errors) == 1 and cuda_only in errors[0], result.stderr[-2000:]
    assert "exported for cuda, but this machine runs JAX on cpu" in errors[0]

    missing = str(tmp_path / "no_checkpoint")
    assert main(["export", "--checkpoint", missing, "--output", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert missing in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["export", "--checkpoint", missing, "--output", str(tmp_path / "x.npz"),
                 "--platforms", "cpu,metal"]) == 2
    assert "metal is not a jax.export platform" in capsys.readouterr().err


def test_mouth_box_matches_the_pipelines_numpy_version_at_the_borders():
    # Landmarks inside, on and far outside the image: a box above or left of it wraps as numpy's negative slice
    # stops do in `box_mask`.
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(-1, 1, (40, 4)), rng.uniform(-3, 3, (40, 4)),
                             np.array([[-1, 1, -1, 1], [-1.2, -1.15, -1.3, -1.25], [0.99, 3, 1, 1], [-50, -40, 2, 5]])])
    subset = np.zeros((len(values), 4, 2), np.float32)
    subset[:, 0, 0], subset[:, 1, 0], subset[:, 2, 1], subset[:, 3, 1] = values.T.astype(np.float32)
    ours = np.asarray(jax.jit(lambda s: _box_mask(s, (0, 1), (2, 3), 32, 5))(subset))
    expected = np.stack([box_mask(s, (0, 1), (2, 3), 32, 32, 5) for s in subset])
    np.testing.assert_array_equal(ours, expected)


def test_platform_names_are_normalised_and_checked():
    assert _check_platforms(["cpu", " CUDA", "cpu"]) == ("cpu", "cuda")
    with pytest.raises(ExportError, match="none given"):
        _check_platforms(["", " "])
