"""Data in the official inference layout (spec §1.6), read safely and validated file by file.

    root/<k>/imgs/<frame>.png   root/<k>/ldmks/<frame>_ldmk.npy   root/<k>/thetas/<frame>_theta.npy
    root/src_<k>.png  src_<k>_ldmk.npy  src_<k>_id.npy  src_map_dict.pkl   ({frame file name: k})

Like the official loader, the three per-frame lists come from separate recursive globs sorted independently; here
their stems must also line up. The official glob class `[!src_]*` skips every name starting with s, r, c or _:
frame names must not start with those characters (they would be silently dropped by the official code).
"""

import dataclasses
import glob
import io
import os
import pickle
from collections.abc import Iterator

import numpy as np
from PIL import Image

from metaportrait_jax.errors import UserError
from metaportrait_jax.ops.rasterize import landmark_line_image
from metaportrait_jax.ops.topology import Topology, gaze_points, landmark_subset, mouth_mask


class DataError(UserError):
    """Input data is missing, mismatched or malformed; the message names the file."""


class _PlainDataUnpickler(pickle.Unpickler):
    """Admits only pickle's own plain types (dict, str, int, float, ...): any class or function is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it references {module}.{name}; only plain dicts, strings and numbers are read")


def read_src_map(path: str) -> dict[str, str]:
    """`src_map_dict.pkl` -> {frame file name: class key as a string}, without running pickled code."""
    try:
        with open(path, "rb") as f:
            data = _PlainDataUnpickler(io.BytesIO(f.read())).load()
    except FileNotFoundError:
        raise DataError(f"{path}: missing (the official layout needs src_map_dict.pkl)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a plain-data pickle ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in data.items()):
        raise DataError(f"{path}: must hold a dict of frame file name -> class key (str or int)")
    return {k: str(v) for k, v in data.items()}


def load_image(path: str, size: int) -> np.ndarray:
    """`[size, size, 3]` float32 in [0, 1], resized with PIL bicubic like the official loader."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            return np.asarray(im, np.float32) / 255
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def load_array(path: str, shapes: tuple[tuple[int, ...], ...], what: str) -> np.ndarray:
    """A `.npy` file (no pickles) whose shape is one of `shapes`, finite, as float32."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e})") from None
    if array.shape not in shapes:
        raise DataError(f"{path}: {what} must have shape {' or '.join(map(str, shapes))}, got {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
        raise DataError(f"{path}: {what} must be finite numbers")
    return array.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Frame:
    name: str          # driving file name, e.g. 00000000.png
    image: str
    landmarks: str
    class_key: str


class OfficialLayout:
    """The driving frames of an official-layout folder and their sources, as generator batches."""

    def __init__(self, root: str, frames: list[Frame], topology: Topology, image_size: int, id_dim: int):
        self.root, self.frames, self.topology = root, frames, topology
        self.image_size, self.id_dim = image_size, id_dim
        self._sources: dict[str, dict[str, np.ndarray]] = {}

    @classmethod
    def open(cls, root: str, topology: Topology, image_size: int, id_dim: int) -> "OfficialLayout":
        if not os.path.isdir(root):
            raise DataError(f"{root}: not a directory")
        src_map = read_src_map(os.path.join(root, "src_map_dict.pkl"))

        def frame_files(sub: str, pattern: str) -> list[str]:
            found = glob.glob(os.path.join(root, "*", sub, "**", pattern), recursive=True)
            return sorted(p for p in found if not os.path.basename(p).startswith(("s", "r", "c", "_")))

        images = frame_files("imgs", "*.png")
        ldmks = frame_files("ldmks", "*_ldmk.npy")
        thetas = frame_files("thetas", "*_theta.npy")
        if not images:
            raise DataError(f"{root}: no driving frames found under <k>/imgs/")
        stems = [os.path.splitext(os.path.basename(image))[0] for image in images]
        for files, sub, suffix in ((ldmks, "ldmks", "_ldmk.npy"), (thetas, "thetas", "_theta.npy")):
            if len(files) != len(images):
                have = {os.path.basename(p) for p in files}
                culprits = ([f"{image} has no {sub}/{stem}{suffix}" for image, stem in zip(images, stems)
                             if stem + suffix not in have] +
                            [f"{sub}/{name} has no frame in imgs/"
                             for name in sorted(have - {stem + suffix for stem in stems})])
                raise DataError(f"{root}: {len(images)} frames in imgs/ but {len(files)} files {sub}/*{suffix}: "
                                f"{'; '.join(culprits[:5])}{'; ...' if len(culprits) > 5 else ''}")
        frames = []
        for image, ldmk, theta in zip(images, ldmks, thetas):
            stem = os.path.splitext(os.path.basename(image))[0]
            for path, suffix in ((ldmk, "_ldmk.npy"), (theta, "_theta.npy")):
                if os.path.basename(path) != stem + suffix:
                    raise DataError(f"{path}: does not match frame {image} (sorted lists must line up; expected "
                                    f"{stem + suffix})")
            name = os.path.basename(image)
            if name not in src_map:
                raise DataError(f"{image}: frame name {name!r} is not in src_map_dict.pkl")
            frames.append(Frame(name, image, ldmk, src_map[name]))
        names = [f.name for f in frames]
        if len(set(names)) != len(names):
            raise DataError(f"{root}: frame file names must be unique across the whole root")
        layout = cls(root, frames, topology, image_size, id_dim)
        for key in sorted({f.class_key for f in frames}):
            layout._source(key)  # validate every source before anything is generated
        return layout

    def __len__(self) -> int:
        return len(self.frames)

    def _source(self, key: str) -> dict[str, np.ndarray]:
        if key not in self._sources:
            prefix = os.path.join(self.root, f"src_{key}")
            n = self.topology.num_points
            ldmk = load_array(prefix + "_ldmk.npy", ((n, 2),), f"landmarks ({self.topology.name})")
            identity = load_array(prefix + "_id.npy", ((1, self.id_dim), (self.id_dim,)), "identity embedding")
            self._sources[key] = dict(
                source=load_image(prefix + ".png", self.image_size),
                source_line=landmark_line_image(ldmk, self.topology, self.image_size),
                source_id=identity.reshape(self.id_dim))
        return self._sources[key]

    def example(self, index: int) -> dict[str, np.ndarray]:
        """One generator input (NHWC, no batch axis) for driving frame `index`."""
        frame = self.frames[index]
        size = self.image_size
        ldmk = load_array(frame.landmarks, ((self.topology.num_points, 2),), f"landmarks ({self.topology.name})")
        subset = landmark_subset(ldmk, self.topology)
        load_image(frame.image, size)  # the driving RGB is not a generator input, but it must be readable
        return dict(self._source(frame.class_key),
                    driving_line=landmark_line_image(ldmk, self.topology, size),
                    mouth_mask=mouth_mask(subset, self.topology, size, size),
                    driving_gaze=gaze_points(subset, self.topology))

    def iterate_batches(self, batch_size: int) -> Iterator[tuple[list[str], dict[str, np.ndarray], int]]:
        """(frame names, stacked batch, number of real rows); the last batch is padded by repeating its last row."""
        for start in range(0, len(self.frames), batch_size):
            indices = list(range(start, min(start + batch_size, len(self.frames))))
            examples = [self.example(i) for i in indices]
            valid = len(examples)
            examples += [examples[-1]] * (batch_size - valid)
            batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
            yield [self.frames[i].name for i in indices], batch, valid


def write_sample_layout(root: str, frames_per_class: tuple[int, ...] = (3, 2), size: int = 64, id_dim: int = 32,
                        seed: int = 0) -> list[str]:
    """Writes a small official-layout folder of random frames and dense669 landmarks; returns the frame names.

    For tests and the pipeline demo: it exercises every file the official layout has, not a real face.
    """
    rng = np.random.default_rng(seed)
    src_map = {}
    for k, n in enumerate(frames_per_class):
        for sub in ("imgs", "ldmks", "thetas"):
            os.makedirs(os.path.join(root, str(k), sub), exist_ok=True)
        for i in range(n):
            name = f"{k}{i:07d}"
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                os.path.join(root, str(k), "imgs", name + ".png"))
            np.save(os.path.join(root, str(k), "ldmks", name + "_ldmk.npy"), rng.uniform(0.2, 0.8, (669, 2)))
            np.save(os.path.join(root, str(k), "thetas", name + "_theta.npy"), np.eye(2, 3))
            src_map[name + ".png"] = k
        Image.fromarray(rng.integers(0, 255, (2 * size, 2 * size, 3), dtype=np.uint8)).save(
            os.path.join(root, f"src_{k}.png"))
        np.save(os.path.join(root, f"src_{k}_ldmk.npy"), rng.uniform(0.2, 0.8, (669, 2)))
        np.save(os.path.join(root, f"src_{k}_theta.npy"), np.eye(2, 3))
        np.save(os.path.join(root, f"src_{k}_id.npy"), rng.normal(size=(1, id_dim)).astype(np.float32))
    with open(os.path.join(root, "src_map_dict.pkl"), "wb") as f:
        pickle.dump(src_map, f)
    return sorted(src_map)
