"""`evaluate`: both protocols on a tiny synthetic set (values against direct computations) and on real faces in the
official layout, the not-applicable paths, pairing, and the bad-input paths."""

import json
import os
import types

import numpy as np
import pytest
from PIL import Image

from metaportrait_jax.cli import main
from metaportrait_jax.convert.inception import expected_state_dict_shapes
from metaportrait_jax.data.datasets import SyntheticPlan, build_synthetic
from metaportrait_jax.data.preprocess import MissingToolsError
from metaportrait_jax.data.sources import ClipTable, TfdsFrames
from metaportrait_jax.eval import evaluate as ev
from metaportrait_jax.eval import metrics
from metaportrait_jax.eval.animate import animate_frames
from metaportrait_jax.models.generator import generator_forward
from metaportrait_jax.train.checkpoint import load_model
from tiny_models import save_tiny_checkpoint

torch = pytest.importorskip("torch")
PLAN = SyntheticPlan(64, train_identities=1, test_identities=3, clips_per_identity=2, frames_per_clip=3, id_dim=32)


def _random_tensor(rng: np.random.Generator, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """He-normal conv weights; batch-norm scales and variances near 1, means and biases near 0."""
    if key.endswith("conv.weight"):
        return (rng.normal(size=shape) * np.sqrt(2 / np.prod(shape[1:]))).astype(np.float32)
    centre = 1.0 if key.endswith(("bn.weight", "bn.running_var")) else 0.0
    return (centre + 0.1 * rng.uniform(-1, 1, shape)).astype(np.float32)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(TFDS root holding the synthetic set, its data set folder, checkpoints, random Inception weights .pth)."""
    folder = tmp_path_factory.mktemp("evaluate")
    root = str(folder / "tfds")
    data = build_synthetic(root, PLAN)
    # Random weights in pytorch-fid's layout (fc with 1008 outputs); their forward is checked in test_fid.py.
    rng = np.random.default_rng(0)
    state_dict = {key: torch.from_numpy(_random_tensor(rng, key, shape))
                  for key, shape in expected_state_dict_shapes().items()}
    state_dict["fc.weight"] = torch.zeros(1008, 2048)
    fid = str(folder / "inception.pth")
    torch.save(state_dict, fid)
    return types.SimpleNamespace(
        root=root, data=data, fid=fid,
        model=save_tiny_checkpoint(str(folder / "ckpt_synthetic"), "synthetic", PLAN.id_dim),
        mediapipe=save_tiny_checkpoint(str(folder / "ckpt_mediapipe"), "mediapipe478", 128))


def test_synthetic_evaluation_matches_direct_computation(synthetic, tmp_path, capsys):
    pytest.importorskip("dlib")
    pytest.importorskip("mediapipe")
    out = str(tmp_path / "eval")
    assert main(["evaluate", "--checkpoint", synthetic.model, "--data", synthetic.root, "--output", out,
                 "--max-frames", "3", "--fid-weights", synthetic.fid, "--no-progress"]) == 0
    assert "| model |" in capsys.readouterr().out
    with open(os.path.join(out, "metrics.json")) as f:
        report = json.load(f)
    assert report["not_applicable"] == {} and report["settings"]["fid_variant"] == "pytorch_fid"
    own = report["protocols"]["self_reconstruction"]
    assert (own["persons"], own["frames"]) == (3, 9)
    model = own["rows"]["model"]
    assert set(model) >= {"l1", "psnr", "ssim", "lpips", "csim", "aed", "akd", "mkr", "twe", "fid"}
    assert set(own["rows"]["ground_truth"]) == {"csim", "twe", "dlib_face_found"}

    # The same pairings by hand: source = first clip's first frame, driving = the second clip, ground truth known.
    config, variables, _ = load_model(synthetic.model)
    frames = TfdsFrames(synthetic.data, "test")
    forward = generator_forward(config.model)
    predictions, truths, sources, flows = [], [], [], []
    for person in range(3):
        first, second = frames.clips.clips_of(person)
        drivers = range(int(frames.clips.start[second]), int(frames.clips.start[second]) + 3)
        result = animate_frames(forward, variables, frames, int(frames.clips.source[first]), drivers, batch_size=4)
        predictions.append(result["prediction"])
        truths.append(result["driving"])
        sources.append(np.broadcast_to(frames[int(frames.clips.source[first])]["image"], result["driving"].shape))
        flows.append(np.stack([frames[r]["flow"] for r in drivers]))
    prediction, truth = np.concatenate(predictions), np.concatenate(truths)
    np.testing.assert_allclose(model["l1"], np.mean(metrics.l1(prediction, truth)), rtol=1e-5)
    np.testing.assert_allclose(model["psnr"], np.mean(metrics.psnr(prediction, truth)), rtol=1e-5)
    np.testing.assert_allclose(own["rows"]["source_copy"]["ssim"],
                               np.mean(metrics.ssim(np.concatenate(sources), truth)), rtol=1e-5)
    twe = np.mean([np.mean(metrics.temporal_warping_error(p, f)) for p, f in zip(predictions, flows)])
    np.testing.assert_allclose(model["twe"], twe, rtol=1e-5)
    assert model["fid"] > 0 and model["fid_samples"] == [9, 9]
    # The source copy beats a random model on pixels; the warped source (zero-ish flow) lies near the copy.
    assert own["rows"]["source_copy"]["psnr"] > model["psnr"]

    cross = report["protocols"]["cross_identity"]
    assert (cross["persons"], cross["frames"]) == (3, 9)
    assert [(p["source_person"], p["driving_person"]) for p in cross["pairings"]] == [(0, 1), (1, 2), (2, 0)]
    assert set(cross["rows"]["driving_frame"]) == {"csim", "aed", "akd_rel", "dlib_face_found"}
    # MediaPipe sees the rendered heads: real frames get landmarks, so the no-motion baseline has a finite AKD.
    assert np.isfinite(cross["rows"]["source_copy"]["akd"]) and cross["rows"]["source_copy"]["mkr"] == 0
    assert -1 <= cross["rows"]["model"]["csim"] <= 1

    table = open(os.path.join(out, "metrics.md")).read()
    assert "## Self-reconstruction" in table and "## Cross-identity reenactment" in table
    # A random model draws no face: MKR 1, and AKD has no frame to average (marked, with the reason).
    assert model["mkr"] == 1 and model["akd"] is None and "| 1.0000 |" in table
    assert table.count("n/a (1)") == 3 and "(1) no frame to measure: none with a face in both" in table
    assert "| ground truth | — | — | — | — |" in table
    grid = np.asarray(Image.open(os.path.join(out, "samples_self_reconstruction.png")))
    assert grid.shape == (3 * 64, 7 * 64, 3)
    assert sorted(os.listdir(out)) == ["metrics.json", "metrics.md", "samples_cross_identity.png",
                                       "samples_self_reconstruction.png"]


def test_unavailable_measures_are_marked_with_their_reason(synthetic, tmp_path, monkeypatch):
    def no_tools():
        raise MissingToolsError("pip install the preprocess extra")

    monkeypatch.setattr(ev, "FaceTools", no_tools)
    report = ev.evaluate(synthetic.model, synthetic.data, str(tmp_path / "e"), max_persons=1, max_frames=2,
                         progress=False)
    assert report["protocols"]["cross_identity"] == {"skipped": "needs at least two persons, the data has 1"}
    assert "pip install the preprocess extra" in report["not_applicable"]["csim"]
    assert "Inception-v3 weights" in report["not_applicable"]["fid"]
    rows = report["protocols"]["self_reconstruction"]["rows"]
    assert "csim" not in rows["model"] and "l1" in rows["model"] and "twe" in rows["model"]
    table = ev.markdown_report(report)
    assert "Not run: needs at least two persons, the data has 1." in table
    assert "dlib / MediaPipe unavailable: pip install the preprocess extra" in table
    assert "| model |" in table and "n/a (1)" in table and "n/a (2)" in table


def test_pairings_use_the_second_clip_and_the_next_person():
    # Person 0 has two clips, person 1 one clip (the official layout's case), person 2 two.
    clips = ClipTable(person=np.asarray([0, 0, 1, 2, 2]), source=np.asarray([0, 5, 10, 20, 30]),
                      start=np.asarray([1, 6, 11, 21, 31]), length=np.asarray([4, 4, 9, 9, 2]))
    pairings, skipped = ev.plan_pairings(types.SimpleNamespace(clips=clips), None, 3)
    assert skipped == {}
    own = [(p.source_record, p.driving_records) for p in pairings[ev.SELF]]
    assert own == [(0, (6, 7, 8)), (10, (11, 12, 13)), (20, (31, 32))]
    cross = [(p.source_person, p.driving_person, p.source_record, p.driving_records) for p in pairings[ev.CROSS]]
    assert cross == [(0, 1, 0, (11, 12, 13)), (1, 2, 10, (31, 32)), (2, 0, 20, (6, 7, 8))]
    pairings, skipped = ev.plan_pairings(types.SimpleNamespace(clips=clips), 1, None)
    assert pairings[ev.SELF][0].driving_records == (6, 7, 8, 9) and ev.CROSS in skipped


def test_real_faces_in_the_official_layout(synthetic, tmp_path):
    pytest.importorskip("dlib")
    pytest.importorskip("mediapipe")
    import cv2
    from test_preprocess import _moved_faces

    from metaportrait_jax.data.preprocess import preprocess
    from metaportrait_jax.media.video import write_mp4

    faces, _ = _moved_faces()
    videos = tmp_path / "videos"
    videos.mkdir()
    write_mp4(str(videos / "a.mp4"), faces[:4], fps=10)
    # A second "person": the mirrored face with warmer colours.
    write_mp4(str(videos / "b.mp4"), [cv2.convertScaleAbs(f[:, ::-1], alpha=1.1, beta=10) for f in faces[4:8]], fps=10)
    layout = str(tmp_path / "layout")
    preprocess(str(videos), layout, size=64, progress=False)
    report = ev.evaluate(synthetic.mediapipe, layout, str(tmp_path / "e"), progress=False)
    assert report["settings"]["split"] is None
    assert "no ground-truth optical flow" in report["not_applicable"]["twe"]
    own = report["protocols"]["self_reconstruction"]
    assert (own["persons"], own["frames"]) == (2, 8)
    truth = own["rows"]["ground_truth"]
    assert set(truth) == {"csim", "dlib_face_found"} and truth["csim"] > 0.9 and truth["dlib_face_found"] == 1
    # Real faces: every reference frame has landmarks, so the no-motion baseline is measured on every frame.
    assert np.isfinite(own["rows"]["source_copy"]["akd"]) and own["rows"]["source_copy"]["mkr"] == 0
    cross = report["protocols"]["cross_identity"]["rows"]
    assert cross["source_copy"]["akd_rel"] < cross["source_copy"]["akd"]


@pytest.mark.parametrize("change,expected", [
    ({"--data": "missing"}, "missing: not a folder"),
    ({"--data": "empty"}, "neither a data set built by"),
    ({"--checkpoint": "mediapipe"}, "landmark topology synthetic (model expects mediapipe478)"),
    ({"--split": "validation"}, "no split 'validation'"),
    ({"--fid-weights": "garbage.pth"}, "garbage.pth: not a torch checkpoint"),
    ({"--fid-weights": "partial.pth"}, "does not fit Inception-v3: 1 missing keys: Mixed_7c.branch_pool.conv.weight"),
    ({"--fid-variant": "torchvision"}, "--fid-variant needs --fid-weights"),
    ({"--output": "a_file"}, "a_file: exists and is not a folder"),
])
def test_bad_input_is_one_line_and_keeps_earlier_results(synthetic, tmp_path, capsys, change, expected):
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.pth").write_bytes(b"\x00" * 64)
    (tmp_path / "a_file").write_text("x")
    partial = {k: v for k, v in torch.load(synthetic.fid).items() if k != "Mixed_7c.branch_pool.conv.weight"}
    torch.save(partial, str(tmp_path / "partial.pth"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("earlier")
    args = {"--checkpoint": synthetic.model, "--data": synthetic.data, "--output": str(out)}
    for flag, value in change.items():
        args[flag] = {"--checkpoint": getattr(synthetic, value, None), "--split": value,
                      "--fid-variant": value}.get(flag) or str(tmp_path / value)
    assert main(["evaluate", *[x for pair in args.items() for x in pair]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metaportrait-jax: error: ") and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert os.listdir(out) == ["metrics.json"] and (out / "metrics.json").read_text() == "earlier"
