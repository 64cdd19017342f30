"""The console script on tiny inputs: summary, animate --official-data end to end, and the bad-input paths."""

import os
import pickle

import imageio.v2 as imageio
import jax
import numpy as np
import pytest

from metaportrait_jax.cli import main
from metaportrait_jax.config import load_config
from metaportrait_jax.data.official_layout import write_sample_layout
from metaportrait_jax.media.video import read_video_frames
from metaportrait_jax.models.generator import Generator
from metaportrait_jax.train.checkpoint import save_model
from tiny_models import random_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    config = load_config(TINY)
    variables = random_variables(config.model)
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    save_model(path, config, variables, network="generator")
    return path


def test_summary_prints_totals(capsys):
    assert main(["summary", "--config", TINY]) == 0
    out = capsys.readouterr().out
    assert "generator total" in out and "1,890,004" in out and "GMACs per frame" in out


def test_animate_official_layout_end_to_end(tiny_checkpoint, tmp_path):
    data = str(tmp_path / "data")
    names = write_sample_layout(data)
    out = str(tmp_path / "out")
    assert main(["animate", "--checkpoint", tiny_checkpoint, "--official-data", data, "--output", out,
                 "--batch-size", "2"]) == 0
    for name in names:
        image = imageio.imread(os.path.join(out, name))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert len(read_video_frames(os.path.join(out, "out_64.mp4"))) == len(names)


def test_animate_matches_a_direct_forward(tiny_checkpoint, tmp_path):
    from metaportrait_jax.data.official_layout import OfficialLayout
    from metaportrait_jax.media.video import to_uint8
    from metaportrait_jax.ops.topology import get_topology
    from metaportrait_jax.train.checkpoint import load_model

    data = str(tmp_path / "data")
    names = write_sample_layout(data, frames_per_class=(2,))
    out = str(tmp_path / "out")
    assert main(["animate", "--checkpoint", tiny_checkpoint, "--official-data", data, "--output", out]) == 0
    config, variables, _ = load_model(tiny_checkpoint)
    layout = OfficialLayout.open(data, get_topology("dense669"), 64, 32)
    example = layout.example(1)
    pred = Generator(config.model).apply(variables, {k: v[None] for k, v in example.items()})["prediction"]
    written = imageio.imread(os.path.join(out, names[1])).astype(int)
    # Jitted and eager forwards round differently in the last bits; truncation to uint8 can then move one level.
    assert np.abs(written - to_uint8(pred[0]).astype(int)).max() <= 1


@pytest.mark.parametrize("breakage,expected", [
    (lambda d: os.remove(os.path.join(d, "0", "ldmks", "00000001_ldmk.npy")),
     "imgs/00000001.png has no ldmks/00000001_ldmk.npy"),
    (lambda d: os.rename(os.path.join(d, "0", "ldmks", "00000001_ldmk.npy"),
                         os.path.join(d, "0", "ldmks", "00000009_ldmk.npy")), "does not match frame"),
    (lambda d: np.save(os.path.join(d, "src_1_ldmk.npy"), np.zeros((68, 2))), "src_1_ldmk.npy: landmarks"),
    (lambda d: open(os.path.join(d, "src_0.png"), "wb").write(b"not a png"), "src_0.png: not a readable image"),
    (lambda d: os.remove(os.path.join(d, "src_1_id.npy")), "src_1_id.npy: missing"),
    (lambda d: np.save(os.path.join(d, "src_1_id.npy"), np.zeros((1, 7))), "identity embedding must have shape"),
])
def test_animate_bad_data_names_the_file(tiny_checkpoint, tmp_path, capsys, breakage, expected):
    data = str(tmp_path / "data")
    write_sample_layout(data)
    breakage(data)
    out = tmp_path / "out"
    assert main(["animate", "--checkpoint", tiny_checkpoint, "--official-data", data, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metaportrait-jax: error: ") and expected in err and "Traceback" not in err
    assert not out.exists()  # nothing is written before the inputs validate


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/metaportrait_pwned",))


def test_malicious_src_map_is_refused_without_running_it(tiny_checkpoint, tmp_path, capsys):
    data = str(tmp_path / "data")
    write_sample_layout(data)
    with open(os.path.join(data, "src_map_dict.pkl"), "wb") as f:
        pickle.dump({"00000000.png": Exploit()}, f)
    if os.path.exists("/tmp/metaportrait_pwned"):
        os.remove("/tmp/metaportrait_pwned")
    assert main(["animate", "--checkpoint", tiny_checkpoint, "--official-data", data, "--output",
                 str(tmp_path / "o")]) == 2
    assert "src_map_dict.pkl: not a plain-data pickle" in capsys.readouterr().err
    assert not os.path.exists("/tmp/metaportrait_pwned")


def test_missing_checkpoint_and_bad_config(tmp_path, capsys):
    assert main(["animate", "--checkpoint", str(tmp_path / "none"), "--official-data", str(tmp_path),
                 "--output", str(tmp_path / "o")]) == 2
    assert "not a metaportrait-jax model checkpoint" in capsys.readouterr().err
    assert main(["summary", "--config", TINY, "--config.model.id_dim=abc"]) == 2
    assert "expected int" in capsys.readouterr().err
    assert main(["convert", "official-base", "--checkpoint", str(tmp_path / "x.pth"), "--output",
                 str(tmp_path / "c"), "--config", TINY]) == 2
    assert "x.pth" in capsys.readouterr().err


def test_bad_train_config_is_refused_before_any_data_are_built(tmp_path, capsys):
    data_dir = tmp_path / "data"
    for command, config, override, message in [
            ("train", "pretrain_full.py:tiny", "--config.train.compute_dtype=float16",
             "train.compute_dtype must be one of"),
            ("meta-train", "meta_train.py:tiny", "--config.meta.algorithm=mamI", "meta.algorithm must be one of")]:
        assert main([command, "--config", os.path.join(REPO, "configs", config), "--workdir", str(tmp_path / "run"),
                     f"--config.data.data_dir={data_dir}", override]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not data_dir.exists()


def test_every_public_api_name_resolves_and_the_cli_calls_only_the_api():
    from metaportrait_jax import api

    assert all(getattr(api, name) is not None for name in api.__all__)
    with pytest.raises(AttributeError, match="no attribute 'train_from_config'"):
        api.train_from_config  # noqa: B018
    with open(os.path.join(REPO, "metaportrait_jax", "cli.py")) as f:
        source = f.read()
    imported = {line.split()[1] for line in source.splitlines() if line.lstrip().startswith(("import ", "from "))}
    # besides the API: config files, the error class, and leaving a failed multi-process job
    assert {m for m in imported if m.startswith("metaportrait_jax")} == {
        "metaportrait_jax", "metaportrait_jax.config", "metaportrait_jax.errors", "metaportrait_jax.train.distributed"}
