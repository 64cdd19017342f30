"""Input pipelines: determinism, resume equivalence, per-process shares, sampling rules, TFDS round trips, errors."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from metaportrait_jax.data.datasets import build_from_official_layout
from metaportrait_jax.data.official_layout import DataError, write_sample_layout
from metaportrait_jax.data.pipeline import PipelineSpec, epoch_size, make_dataset, make_iterator
from metaportrait_jax.data.sources import METADATA_FILE, ClipTable, OfficialLayoutFrames, TfdsFrames
from metaportrait_jax.ops.topology import get_topology
from metaportrait_jax.train.sharding import global_batch, make_mesh
from multiprocess import free_port, job_environment
from run_tools import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MemoryFrames:
    """A frame source in memory: 3 persons; person 0 and 1 with two clips, person 2 with one; sizes 32²."""

    def __init__(self, size: int = 32, id_dim: int = 8):
        self.topology, self.image_size, self.id_dim = get_topology("dense669"), size, id_dim
        rng = np.random.default_rng(0)
        person = np.array([0, 0, 1, 1, 2])
        length = np.array([5, 4, 6, 3, 7])
        # clips 0-3 have a separate source record before their frames; clip 4 uses its first frame as source
        source, start, records = [], [], 0
        for c, n in enumerate(length):
            separate = c < 4
            source.append(records)
            start.append(records + separate)
            records += n + separate
        self.clips = ClipTable(person=person, source=np.array(source), start=np.array(start), length=length)
        self.records = [{"image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                         "landmarks": rng.uniform(0.2, 0.8, (669, 2)).astype(np.float32),
                         "visibility": np.ones(669, np.uint8)} for _ in range(records)]
        for c in range(self.clips.num_clips):
            end = self.clips.start[c] + self.clips.length[c]
            for r in range(self.clips.source[c], end):
                self.records[r]["identity"] = np.full(id_dim, person[c], np.float32)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.records[int(index)]


def _batches(frames, spec, count, process_index=0, process_count=1, state=None):
    iterator = make_iterator(make_dataset(frames, spec, process_index, process_count), spec, state)
    return [next(iterator) for _ in range(count)]


def _assert_same(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _clip_of(clips: ClipTable, record: int) -> int:
    inside = (clips.start <= record) & (record < clips.start + clips.length)
    return int(np.flatnonzero(inside)[0])


@pytest.fixture(scope="module")
def frames():
    return MemoryFrames()


@pytest.mark.parametrize("spec", [PipelineSpec("pairs", 4, source="random"), PipelineSpec("episodes", 2),
                                  PipelineSpec("clips", 2, clip_length=3)], ids=lambda s: s.kind)
def test_pipelines_are_deterministic_and_depend_on_the_seed(frames, spec):
    first, second = _batches(frames, spec, 3), _batches(frames, spec, 3)
    _assert_same(first, second)
    other = _batches(frames, PipelineSpec(**{**spec.__dict__, "seed": 1}), 3)
    key = {"pairs": "source", "episodes": "query", "clips": "frames"}[spec.kind]
    assert any(not np.array_equal(jax.tree.leaves(a[key])[0], jax.tree.leaves(b[key])[0]) for a, b in zip(first, other))


def test_resumed_iterator_yields_the_uninterrupted_batches(frames):
    spec = PipelineSpec("pairs", 4, source="random", workers=3)
    iterator = make_iterator(make_dataset(frames, spec), spec)
    uninterrupted = [next(iterator) for _ in range(6)]
    iterator = make_iterator(make_dataset(frames, spec), spec)
    for _ in range(2):
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))  # states go to checkpoints as JSON
    resumed = _batches(frames, spec, 4, state=state)
    _assert_same(uninterrupted[2:], resumed)


def test_two_processes_see_disjoint_shares_covering_every_frame(frames):
    spec = PipelineSpec("pairs", 6)
    steps = 2 * epoch_size(frames, spec) // spec.global_batch + 1  # two epochs and a bit
    shares = [_batches(frames, spec, steps, p, 2) for p in range(2)]
    whole = _batches(frames, spec, steps)
    for step in range(steps):
        rows = [share[step]["driving_record"] for share in shares]
        assert len(rows[0]) == len(rows[1]) == 3
        np.testing.assert_array_equal(np.concatenate(rows), whole[step]["driving_record"])
    drivers = np.concatenate([b["driving_record"] for b in whole])
    epoch = epoch_size(frames, spec)
    all_driving = sorted(r for c in range(frames.clips.num_clips)
                         for r in range(frames.clips.start[c], frames.clips.start[c] + frames.clips.length[c]))
    assert sorted(drivers[:epoch]) == all_driving and sorted(drivers[epoch:2 * epoch]) == all_driving
    assert not np.array_equal(drivers[:epoch], drivers[epoch:2 * epoch])  # each epoch has its own order


def test_pairs_take_the_clip_source_or_a_frame_of_the_same_clip(frames):
    clips = frames.clips
    for source_mode in ("clip", "random"):
        batch = _batches(frames, PipelineSpec("pairs", 27, source=source_mode), 1)[0]
        for s, d in zip(batch["source_record"], batch["driving_record"]):
            clip = _clip_of(clips, d)
            if source_mode == "clip":
                assert s == clips.source[clip]
            else:
                assert _clip_of(clips, s) == clip
        np.testing.assert_array_equal(batch["source"][0] * 255, frames[batch["source_record"][0]]["image"])
        assert batch["driving_gaze"].shape == (27, 8, 2) and batch["mouth_mask"].shape == (27, 32, 32, 1)


def test_episodes_adapt_on_one_clip_and_query_another_of_the_same_person(frames):
    clips = frames.clips
    batch = _batches(frames, PipelineSpec("episodes", 3, support=4, query=5), 2)
    seen = []
    for episodes in batch:
        for e in range(3):
            person = episodes["person"][e]
            seen.append(int(person))
            support = {_clip_of(clips, r) for r in episodes["support"]["driving_record"][e]}
            query = {_clip_of(clips, r) for r in episodes["query"]["driving_record"][e]}
            assert len(support) == len(query) == 1
            assert {int(clips.person[c]) for c in support | query} == {person}
            if person != 2:  # persons with two clips are judged on the other clip
                assert support != query
            sources = set(episodes["support"]["source_record"][e]) | set(episodes["query"]["source_record"][e])
            assert sources == {clips.source[support.pop()]}
            np.testing.assert_array_equal(episodes["support"]["source_id"][e], np.full((4, 8), person))
    assert sorted(seen[:3]) == [0, 1, 2] and sorted(seen[3:]) == [0, 1, 2]


def test_official_episode_sampling_follows_personal_meta_dataset(frames):
    clips, support, query = frames.clips, 2, 3
    batch = _batches(frames, PipelineSpec("episodes", 2, support=support, query=query,
                                          episode_sampling="official"), 1)[0]
    frame_person = np.repeat(clips.person, clips.length)
    for index in range(2):
        rng = np.random.RandomState(365 + index)
        person = rng.choice(frame_person, size=1, replace=False)[0]
        own = [r for c in np.flatnonzero(clips.person == person)
               for r in range(clips.start[c], clips.start[c] + clips.length[c])]
        chosen = np.asarray(own)[rng.randint(0, len(own), size=support + query + 1)]
        assert batch["person"][index] == person
        np.testing.assert_array_equal(batch["support"]["driving_record"][index], chosen[:support])
        np.testing.assert_array_equal(batch["query"]["driving_record"][index], chosen[support:-1])
        assert set(batch["support"]["source_record"][index]) == {chosen[-1]}


def test_clips_are_consecutive_frames_of_one_clip(frames):
    clips = frames.clips
    spec = PipelineSpec("clips", 4, clip_length=3)
    windows = int(np.sum(clips.length - 2))
    assert epoch_size(frames, spec) == windows
    firsts = np.concatenate([b["first_record"] for b in _batches(frames, spec, 4)])[:windows]
    assert len(set(firsts.tolist())) == windows  # every window once per epoch
    batch = _batches(frames, spec, 1)[0]
    for first, video in zip(batch["first_record"], batch["frames"]):
        assert _clip_of(clips, first) == _clip_of(clips, first + 2)
        np.testing.assert_array_equal(video * 255, np.stack([frames[first + t]["image"] for t in range(3)]))


def test_batches_become_global_arrays_split_over_the_data_axis(frames):
    mesh = make_mesh()
    batch = global_batch(_batches(frames, PipelineSpec("pairs", 8), 1)[0], mesh)
    assert batch["source"].shape == (8, 32, 32, 3)
    assert batch["source"].sharding.spec[0] == ("data", "fsdp")
    assert len(batch["source"].addressable_shards) == len(jax.devices())


def test_official_layout_tfds_round_trip(tmp_path):
    root = str(tmp_path / "layout")
    write_sample_layout(root, (3, 2, 4), 32, 8)
    directory = build_from_official_layout(root, str(tmp_path / "tfds"), "dense669", 32, 8, test_persons=1)
    layout = OfficialLayoutFrames(root, get_topology("dense669"), 32, 8)
    train, test = TfdsFrames(directory, "train"), TfdsFrames(directory, "test")
    assert len(train) + len(test) == len(layout) == 3 + 9
    for index in range(len(train)):
        _assert_same(train[index], layout[index])
    _assert_same(test[0], layout[int(layout.clips.source[2])])
    np.testing.assert_array_equal(test.clips.length, [4])
    spec = PipelineSpec("pairs", 4)
    assert _batches(train, spec, 1)[0]["source_id"].shape == (4, 8)


def test_data_errors_name_the_problem(tmp_path, frames):
    with pytest.raises(DataError, match="frames.json: missing"):
        TfdsFrames(str(tmp_path), "train")
    (tmp_path / METADATA_FILE).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        TfdsFrames(str(tmp_path), "train")
    with pytest.raises(ValueError, match="kind must be one of"):
        PipelineSpec("triplets")
    with pytest.raises(ValueError, match="divisible by the process count"):
        make_dataset(frames, PipelineSpec("pairs", 5), 0, 2)
    with pytest.raises(DataError, match="no clip has 9 frames"):
        make_dataset(frames, PipelineSpec("clips", 2, clip_length=9))


def test_two_jax_processes_build_one_global_batch(tmp_path):
    """Two real processes (jax.distributed on CPU) each read their share; the global batch is the 1-process one; a
    mesh that would put a process's rows on the other process's devices is refused."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import jax, numpy as np
        jax.distributed.initialize("127.0.0.1:{free_port()}", num_processes=2, process_id=int(sys.argv[1]))
        sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
        from jax.experimental import multihost_utils
        from test_pipeline import MemoryFrames
        from metaportrait_jax.data.pipeline import PipelineSpec, make_dataset, make_iterator
        from metaportrait_jax.train.sharding import global_batch, make_mesh
        spec = PipelineSpec("pairs", 8)
        local = next(make_iterator(make_dataset(MemoryFrames(), spec, jax.process_index(), jax.process_count()), spec))
        batch = global_batch({{"driving_record": local["driving_record"]}}, make_mesh())
        total = jax.jit(lambda b: b["driving_record"].sum())(batch)
        rows = multihost_utils.process_allgather(batch["driving_record"], tiled=True)
        try:  # devices ordered against the processes: this process's devices hold the other process's rows
            global_batch({{"driving_record": local["driving_record"]}}, make_mesh(devices=jax.devices()[::-1]))
        except ValueError as e:
            print("REFUSED", e, flush=True)
        print("RESULT", int(total), " ".join(map(str, rows.tolist())), flush=True)
    """))
    env = job_environment(XLA_FLAGS=xla_flags(2), JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, str(script), str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=REPO) for i in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    results = [[line for line in out.splitlines() if line.startswith("RESULT")] for out, _ in outputs]
    assert all(results), [err[-2000:] for _, err in outputs]
    assert all("order the mesh's devices by process" in out for out, _ in outputs)
    expected = _batches(MemoryFrames(), PipelineSpec("pairs", 8), 1)[0]["driving_record"]
    for (line,) in results:
        total, *rows = line.split()[1:]
        assert int(total) == int(expected.sum())
        np.testing.assert_array_equal(np.asarray(rows, int), expected)

