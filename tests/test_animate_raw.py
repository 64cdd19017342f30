"""`animate --source PHOTO --driving VIDEO`: a real face (the astronaut) driven by a video of it moved by known affine
warps, through the command, against a direct forward, against `preprocess`'s recipe, and the bad-input paths."""

import os

import cv2
import jax
import numpy as np
import pytest

pytest.importorskip("dlib")
pytest.importorskip("mediapipe")
skimage_data = pytest.importorskip("skimage.data")

from test_preprocess import _moved_faces  # noqa: E402
from tiny_models import save_tiny_checkpoint  # noqa: E402

from metaportrait_jax.cli import main  # noqa: E402
from metaportrait_jax.data import preprocess as pp  # noqa: E402
from metaportrait_jax.data.pipeline import pair_example  # noqa: E402
from metaportrait_jax.data.raw_inputs import _fill_from_nearest, prepare_driving, prepare_source  # noqa: E402
from metaportrait_jax.eval.animate import animate_portrait  # noqa: E402
from metaportrait_jax.media.video import read_video_frames, to_uint8, write_mp4  # noqa: E402
from metaportrait_jax.models.generator import BATCH_KEYS, Generator  # noqa: E402
from metaportrait_jax.ops.retarget import relative_landmarks  # noqa: E402
from metaportrait_jax.ops.topology import get_topology  # noqa: E402
from metaportrait_jax.train.checkpoint import load_model  # noqa: E402

BLACK = (3, 4)  # driving frames without a face


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Checkpoints and media: photo.png (the whole astronaut image), drive.mp4 (six moved faces with two black frames
    at 3-4), and the bad inputs."""
    folder = tmp_path_factory.mktemp("animate")
    faces, _ = _moved_faces()
    black = np.zeros_like(faces[0])
    write_mp4(str(folder / "drive.mp4"), faces[:3] + [black, black] + faces[3:6], fps=10)
    write_mp4(str(folder / "black.mp4"), [black] * 3, fps=10)
    (folder / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    cv2.imwrite(str(folder / "photo.png"), skimage_data.astronaut()[..., ::-1])
    cv2.imwrite(str(folder / "noise.png"), np.random.default_rng(1).integers(0, 255, (200, 200, 3), np.uint8))
    (folder / "notes.jpg").write_text("not an image")
    return {"dir": folder, "photo": str(folder / "photo.png"), "drive": str(folder / "drive.mp4"),
            "mediapipe": save_tiny_checkpoint(str(folder / "ckpt_mediapipe"), "mediapipe478", 128),
            "synthetic": save_tiny_checkpoint(str(folder / "ckpt_synthetic"), "synthetic", 32)}


def test_command_writes_the_side_by_side_video_and_reports_faceless_frames(inputs, tmp_path, capsys):
    out = str(tmp_path / "deep" / "result.mp4")
    assert main(["animate", "--checkpoint", inputs["mediapipe"], "--source", inputs["photo"], "--driving",
                 inputs["drive"], "--output", out, "--side-by-side", "--batch-size", "3"]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "8 frames at 10 fps" in captured.out
    assert "2 driving frames had no face landmarks (3, 4)" in captured.err and "Traceback" not in captured.err
    frames = read_video_frames(out)
    assert len(frames) == 8 and frames[0].shape == (64, 3 * 64, 3)
    assert os.listdir(tmp_path / "deep") == ["result.mp4"]  # no partial file left


def test_predictions_match_a_direct_forward_with_relative_motion(inputs, tmp_path):
    captured = []

    def double_size(frames):  # stands in for super-resolution: sees every prediction, changes the size
        for frame in frames:
            captured.append(frame)
            yield np.repeat(np.repeat(frame, 2, axis=0), 2, axis=1)

    out = str(tmp_path / "out.mp4")
    report = animate_portrait(inputs["mediapipe"], inputs["photo"], inputs["drive"], out, batch_size=3,
                              side_by_side=True, upsample=double_size, progress=False)
    assert report.frames == 8 and report.driving_frames_without_face == list(BLACK)
    assert read_video_frames(out)[0].shape == (128, 3 * 128, 3)  # panels resized to the upsampled height

    tools = pp.FaceTools()
    source = prepare_source(inputs["photo"], 64, tools)
    driving = prepare_driving(inputs["drive"], 64, tools, progress=False)
    targets = relative_landmarks(source.landmarks, driving.landmarks, driving.landmarks[0])
    np.testing.assert_allclose(targets[0], source.landmarks, atol=1e-6)
    assert np.abs(targets - driving.landmarks).max() > 0.01  # the source keeps its own face, not the driver's
    config, variables, _ = load_model(inputs["mediapipe"])
    topology = get_topology("mediapipe478")
    record = {"image": source.image, "landmarks": source.landmarks}
    examples = [pair_example(record, {"image": f, "landmarks": t}, source.identity, topology)
                for f, t in zip(driving.frames, targets)]
    batch = {k: np.stack([e[k] for e in examples]) for k in BATCH_KEYS}
    expected = to_uint8(jax.jit(Generator(config.model).apply)(variables, batch)["prediction"])
    # Batches of 3 (padded) and of 8 round differently in the last bits: one uint8 level at most.
    assert np.abs(np.stack(captured).astype(int) - expected.astype(int)).max() <= 1
    # Faceless frames hold the last landmarks seen, so they repeat that frame's prediction.
    np.testing.assert_array_equal(captured[3], captured[2])
    np.testing.assert_array_equal(captured[4], captured[2])


def test_driving_video_is_prepared_exactly_as_preprocess_does(inputs, tmp_path):
    tools = pp.FaceTools()
    driving = prepare_driving(inputs["drive"], 64, tools, progress=False)
    out = str(tmp_path / "pre")
    pp.preprocess(inputs["drive"], out, size=64, progress=False)
    names = sorted(os.listdir(os.path.join(out, "drive", "imgs")))
    kept = [int(n[5:11]) for n in names]
    assert kept == [i for i in range(8) if i not in BLACK]
    for index, name in zip(kept, names):
        np.testing.assert_array_equal(cv2.imread(os.path.join(out, "drive", "imgs", name))[..., ::-1],
                                      driving.frames[index])
        landmarks = np.load(os.path.join(out, "drive", "ldmks", name.replace(".png", "_ldmk.npy")))
        np.testing.assert_array_equal(landmarks, driving.landmarks[index])


def test_max_frames_and_absolute_motion(inputs, tmp_path, capsys):
    out = str(tmp_path / "short.mp4")
    assert main(["animate", "--checkpoint", inputs["mediapipe"], "--source", inputs["photo"], "--driving",
                 inputs["drive"], "--output", out, "--max-frames", "2", "--motion", "absolute",
                 "--batch-size", "3"]) == 0
    assert len(read_video_frames(out)) == 2 and "warning" not in capsys.readouterr().err


def test_missing_landmarks_are_filled_from_the_nearest_frame():
    a, b = np.zeros((2, 2)), np.ones((2, 2))
    filled = _fill_from_nearest([None, a, None, b, None])
    np.testing.assert_array_equal(filled, np.stack([a, a, a, b, b]))


@pytest.mark.parametrize("change,expected", [
    ({"--source": "noise.png"}, "noise.png: no face found"),
    ({"--source": "notes.jpg"}, "notes.jpg: not a readable image"),
    ({"--source": "missing.png"}, "missing.png: does not exist"),
    ({"--driving": "broken.mp4"}, "broken.mp4: not a readable video"),
    ({"--driving": "black.mp4"}, "black.mp4: no face found in 3 sampled frames"),
    ({"--output": "result.gif"}, "result.gif: the output must be an .mp4 file"),
    ({"--checkpoint": "synthetic"}, "raw photos and videos give 'mediapipe478' landmarks and 128-d dlib identities"),
    ({"--sr": "sr_ckpt"}, "sr_ckpt: not a metaportrait-jax model checkpoint"),
    ({"--official-data": "data"}, "either --source PHOTO --driving VIDEO or --official-data"),
    ({"--driving": None}, "needs both --source PHOTO and --driving VIDEO"),
])
def test_bad_input_is_one_line_and_keeps_the_earlier_output(inputs, tmp_path, capsys, change, expected):
    folder = inputs["dir"]
    out = tmp_path / "result.mp4"
    out.write_bytes(b"an earlier result")
    args = {"--checkpoint": inputs["mediapipe"], "--source": inputs["photo"], "--driving": inputs["drive"],
            "--output": str(out)}
    for flag, value in change.items():
        if value is None:
            del args[flag]
        elif flag == "--checkpoint":
            args[flag] = inputs[value]
        elif flag == "--output":
            args[flag] = str(tmp_path / value)
        else:
            args[flag] = str(folder / value)
    assert main(["animate", *[x for pair in args.items() for x in pair]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metaportrait-jax: error: ") and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out.read_bytes() == b"an earlier result" and sorted(os.listdir(tmp_path)) == ["result.mp4"]
