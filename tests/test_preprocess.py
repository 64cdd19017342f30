"""Real-video preprocessing on a synthetic clip: the astronaut's face moved by known affine transforms."""

import json
import os
import re
import shutil

import cv2
import numpy as np
import pytest

pytest.importorskip("dlib")
pytest.importorskip("mediapipe")
skimage_data = pytest.importorskip("skimage.data")

from metaportrait_jax.cli import main  # noqa: E402
from metaportrait_jax.data import preprocess as pp  # noqa: E402
from metaportrait_jax.data.official_layout import OfficialLayout, read_src_map  # noqa: E402
from metaportrait_jax.data.sources import TfdsFrames  # noqa: E402
from metaportrait_jax.media.video import write_mp4  # noqa: E402
from metaportrait_jax.ops.topology import get_topology  # noqa: E402

BLACK_AT = 4      # three black frames are inserted before moved frame 4
NUM_MOVED = 12


def _moved_faces() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """12 frames `[320, 320, 3]` of the astronaut's head, each the whole image under a known affine `[2, 3]`
    (rotation ±4°, scale ±4 %, translation up to 8 px)."""
    base = np.ascontiguousarray(skimage_data.astronaut()[0:320, 96:416])
    frames, affines = [], []
    for t in range(NUM_MOVED):
        affine = cv2.getRotationMatrix2D((160, 160), 4 * np.sin(0.9 * t), 1 + 0.04 * np.sin(0.6 * t + 1))
        affine[:, 2] += (5 * np.sin(0.7 * t), 4 * np.cos(1.1 * t) - 4)
        frames.append(cv2.warpAffine(base, affine, (320, 320), flags=cv2.INTER_LINEAR))
        affines.append(affine)
    return frames, affines


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A folder with talk.mp4 (moved faces, three black frames at 4-6), blank.mp4 (black) and broken.mp4 (random
    bytes)."""
    folder = tmp_path_factory.mktemp("videos")
    frames, affines = _moved_faces()
    black = [np.zeros_like(frames[0])] * 3
    write_mp4(str(folder / "talk.mp4"), frames[:BLACK_AT] + black + frames[BLACK_AT:], fps=10)
    write_mp4(str(folder / "blank.mp4"), black, fps=10)
    (folder / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    # Video frame index -> the affine that made it.
    video_affines = {i if i < BLACK_AT else i + 3: a for i, a in enumerate(affines)}
    return str(folder), video_affines


@pytest.fixture(scope="module")
def processed(clip, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pre") / "out")
    report = pp.preprocess(clip[0], out, progress=False)
    with open(os.path.join(out, pp.MANIFEST)) as f:
        manifest = json.load(f)
    return out, report, manifest


def _landmarks_in_video(out: str, manifest: dict) -> dict[int, np.ndarray]:
    """Video frame index -> `[478, 2]` landmarks mapped back from the static crop to video pixels."""
    left, top, right, _ = manifest["clips"]["talk"]["crop_box"]
    found = {}
    for name in sorted(os.listdir(os.path.join(out, "talk", "ldmks"))):
        index = int(name.split("_")[1])
        found[index] = np.load(os.path.join(out, "talk", "ldmks", name)) * (right - left) + (left, top)
    return found


def test_landmarks_follow_the_known_motion(clip, processed):
    _, affines = clip
    out, _, manifest = processed
    found = _landmarks_in_video(out, manifest)
    assert sorted(found) == sorted(affines)

    def apply(affine, points):
        return points @ affine[:, :2].T + affine[:, 2]

    first = found[0]
    to_base = cv2.invertAffineTransform(affines[0])
    errors, still = [], []
    for index, affine in affines.items():
        predicted = apply(affine, apply(to_base, first))
        errors.append(np.median(np.linalg.norm(found[index] - predicted, axis=1)))
        still.append(np.median(np.linalg.norm(found[index] - first, axis=1)))
    # The tracked mesh follows the known motion to about a pixel; ignoring the motion is several pixels off.
    assert np.median(errors) < 1.5 and max(errors) < 3.0, errors
    assert np.median(still) > 3 * np.median(errors), (still, errors)


def test_output_is_the_official_layout(processed):
    out, report, manifest = processed
    layout = OfficialLayout.open(out, get_topology("mediapipe478"), 256, 128)
    assert len(layout) == NUM_MOVED == report.frames_kept
    example = layout.example(0)
    assert example["source"].shape == (256, 256, 3) and example["driving_gaze"].shape == (8, 2)
    assert example["mouth_mask"].sum() > 0 and example["source_id"].shape == (128,)
    identity = np.load(os.path.join(out, "src_talk_id.npy"))
    assert identity.shape == (1, 128) and identity.dtype == np.float32 and 0.5 < np.linalg.norm(identity) < 2
    names = sorted(os.listdir(os.path.join(out, "talk", "imgs")))
    assert names[0] == manifest["clips"]["talk"]["source_frame"] and not names[0].startswith(("s", "r", "c", "_"))
    assert read_src_map(os.path.join(out, pp.SRC_MAP)) == dict.fromkeys(names, "talk")
    left, top, right, bottom = manifest["clips"]["talk"]["crop_box"]
    assert right - left == bottom - top and 0 <= left and right <= 320 and manifest["clips"]["talk"]["topology"] == (
        "mediapipe478")
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no staging or temporary files left behind


def test_black_frames_are_skipped_and_reported(processed):
    out, report, manifest = processed
    talk = manifest["clips"]["talk"]
    assert talk["status"] == "done" and talk["frames"] == NUM_MOVED + 3
    assert talk["frame_indices_without_face"] == [4, 5, 6] and report.frames_without_face == 3
    assert not [n for n in os.listdir(os.path.join(out, "talk", "imgs")) if int(n[5:11]) in (4, 5, 6)]
    assert any("3 frames without a face" in p for p in report.problems)


def test_corrupt_and_faceless_videos_are_reported_next_to_the_good_one(processed):
    out, report, manifest = processed
    broken = manifest["clips"]["broken"]
    assert broken["status"] == "unreadable" and "broken.mp4" in broken["error"]
    assert manifest["clips"]["blank"]["status"] == "no-face" and not os.path.exists(os.path.join(out, "blank"))
    assert (report.clips_done, report.clips_without_face, report.files_unreadable) == (1, 1, 1)
    assert re.search(r"files unreadable +1\n", pp.format_report(report) + "\n")


def test_rerun_skips_done_clips_and_finishes_partial_ones(clip, processed, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(processed[0], out)  # copy2 keeps the modification times
    frame = os.path.join(out, "talk", "imgs", processed[2]["clips"]["talk"]["source_frame"])
    before = os.stat(frame).st_mtime_ns
    report = pp.preprocess(clip[0], out, progress=False)
    assert (report.clips_already_done, report.clips_done, report.files_unreadable) == (1, 0, 1)
    assert os.stat(frame).st_mtime_ns == before

    # A run interrupted after writing talk's frames but before its manifest entry: the rerun redoes the clip.
    path = os.path.join(out, pp.MANIFEST)
    with open(path) as f:
        manifest = json.load(f)
    del manifest["clips"]["talk"]
    with open(path, "w") as f:
        json.dump(manifest, f)
    os.makedirs(os.path.join(out, ".partial_talk", "imgs"))  # a staging folder left by the crash
    report = pp.preprocess(clip[0], out, progress=False)
    assert (report.clips_already_done, report.clips_done, report.frames_kept) == (0, 1, NUM_MOVED)
    assert os.stat(frame).st_mtime_ns != before
    assert len(OfficialLayout.open(out, get_topology("mediapipe478"), 256, 128)) == NUM_MOVED
    assert not os.path.exists(os.path.join(out, ".partial_talk"))


def test_frame_folder_with_a_corrupt_image_through_the_cli(tmp_path, capsys):
    frames, _ = _moved_faces()
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames[:3]):
        cv2.imwrite(str(folder / f"f{i}.png"), frame[..., ::-1])
    (folder / "f3.png").write_bytes(b"not a png")
    out = str(tmp_path / "out")
    assert main(["preprocess", "--input", str(folder), "--output", out, "--size", "128",
                 "--tfds", str(tmp_path / "tfds")]) == 0
    captured = capsys.readouterr()
    frames_tfds = TfdsFrames(re.search(r"talking_head_videos data set: (\S+)", captured.out).group(1), "train")
    assert len(frames_tfds) == 1 + 3 and frames_tfds.topology.name == "mediapipe478" and frames_tfds.id_dim == 128
    assert re.search(r"frames kept +3\n", captured.out) and re.search(r"files unreadable +1\n", captured.out)
    assert "f3.png: not a readable image" in captured.err
    assert len(OfficialLayout.open(out, get_topology("mediapipe478"), 128, 128)) == 3
    assert cv2.imread(os.path.join(out, "src_frames.png")).shape == (128, 128, 3)


@pytest.mark.parametrize("make_input,expected", [
    (lambda d: str(d / "missing"), "missing: does not exist"),
    (lambda d: str(d), "no videos"),
    (lambda d: (d / "notes.txt").write_text("x") and str(d / "notes.txt"), "not a video"),
])
def test_cli_input_errors_are_one_line(tmp_path, capsys, make_input, expected):
    (tmp_path / "empty").mkdir()
    assert main(["preprocess", "--input", make_input(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metaportrait-jax: error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_foreign_output_folder_is_refused(clip, tmp_path):
    (tmp_path / "someone_elses.txt").write_text("x")
    with pytest.raises(pp.DataError, match="no preprocess_manifest.json"):
        pp.preprocess(clip[0], str(tmp_path), progress=False)


def test_missing_tools_name_the_install_command(clip, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(pp.MissingToolsError, match=r"pip install --no-deps mediapipe==0.10.21"):
        pp.preprocess(clip[0], str(tmp_path / "out"), progress=False)


def test_square_crop_follows_the_official_recipe():
    # Face 100x80 at (200, 100): side int(1.3*100) = 130, centre (250, 140 - 16) -> (185, 59, 130).
    assert pp.square_crop((200, 100, 300, 180), 640, 480) == (185, 59, 130)
    # Clamped inside the frame, and never larger than its short side.
    assert pp.square_crop((0, 0, 100, 100), 640, 480) == (0, 0, 130)
    assert pp.square_crop((500, 300, 640, 480), 640, 480) == (406, 237, 234)
    assert pp.square_crop((0, 0, 600, 470), 640, 480) == (60, 0, 480)
