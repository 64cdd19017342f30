"""The synthetic_talking_heads TFDS builder: records equal the renderer's output, splits are disjoint persons with
two clips each, building is deterministic and idempotent, bad configs are refused."""

import numpy as np
import pytest

from metaportrait_jax.data import synthetic
from metaportrait_jax.data.datasets import SYNTHETIC_CONFIGS, SyntheticPlan, build_synthetic
from metaportrait_jax.data.official_layout import DataError
from metaportrait_jax.data.sources import TfdsFrames

PLAN = SyntheticPlan(32, train_identities=3, test_identities=2, clips_per_identity=2, frames_per_clip=4, id_dim=16)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_synthetic(str(tmp_path_factory.mktemp("synthetic")), PLAN)


def test_records_are_the_rendered_clips_in_order(built):
    train = TfdsFrames(built, "train")
    assert len(train) == 3 * 2 * 4 and train.topology.name == "synthetic" and train.id_dim == 16
    identity = synthetic.sample_identity(np.random.default_rng([PLAN.seed, 0, 1]))
    motion = synthetic.sample_motion(np.random.default_rng([PLAN.seed, 0, 1, 2]), 4)
    clip = synthetic.render_clip(identity, motion, 32)
    first = int(train.clips.start[3])  # person 1, clip 1
    for t in range(4):
        record = train[first + t]
        np.testing.assert_array_equal(record["image"], clip["image"][t])
        np.testing.assert_array_equal(record["landmarks"], clip["landmarks"][t])
        np.testing.assert_array_equal(record["visibility"], clip["visibility"][t])
        np.testing.assert_array_equal(record["flow"], clip["flow"][t])
        np.testing.assert_array_equal(record["identity"], synthetic.identity_vector(identity, 16))


def test_persons_have_two_clips_of_different_motion_and_splits_are_disjoint(built):
    train, test = TfdsFrames(built, "train"), TfdsFrames(built, "test")
    assert list(train.clips.person) == [0, 0, 1, 1, 2, 2] and list(test.clips.person) == [0, 0, 1, 1]
    for split in (train, test):
        for person in split.clips.persons():
            a, b = split.clips.clips_of(person)
            assert not np.array_equal(split[int(split.clips.start[a]) + 3]["landmarks"],
                                      split[int(split.clips.start[b]) + 3]["landmarks"])
            np.testing.assert_array_equal(split[int(split.clips.start[a])]["identity"],
                                          split[int(split.clips.start[b])]["identity"])
    train_ids = {train[int(s)]["identity"].tobytes() for s in train.clips.start}
    test_ids = {test[int(s)]["identity"].tobytes() for s in test.clips.start}
    assert len(train_ids) == 3 and len(test_ids) == 2 and not train_ids & test_ids


def test_building_is_deterministic_and_a_rebuild_is_a_no_op(built, tmp_path):
    again = build_synthetic(str(tmp_path), PLAN)
    a, b = TfdsFrames(built, "test"), TfdsFrames(again, "test")
    for index in (0, 5, len(a) - 1):
        np.testing.assert_array_equal(a[index]["image"], b[index]["image"])
    assert build_synthetic(str(tmp_path), PLAN) == again


def test_named_configs_and_errors():
    assert {"r64", "r128", "r256"} <= set(SYNTHETIC_CONFIGS)
    assert all(plan.clips_per_identity >= 2 for plan in SYNTHETIC_CONFIGS.values())
    with pytest.raises(DataError, match="unknown synthetic data config 'r65'"):
        build_synthetic("/nonexistent", "r65")
    with pytest.raises(DataError, match="clips_per_identity must be >= 2"):
        SyntheticPlan(clips_per_identity=1)
