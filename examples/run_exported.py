"""Animates official-layout data with an artifact of `metaportrait-jax export`, using JAX and numpy alone for the
model (no Flax, no metaportrait_jax), Pillow to read and write images and OpenCV to draw the landmark lines.

  metaportrait-jax export --checkpoint CKPT --output model.npz [--batch 4]
  python examples/run_exported.py model.npz --data DATA --output OUT

DATA is a folder in the official inference layout (root/<k>/imgs/<frame>.png, root/<k>/ldmks/<frame>_ldmk.npy,
root/src_<k>.png, src_<k>_ldmk.npy, src_<k>_id.npy, src_map_dict.pkl); OUT/<frame>.png gets every driving frame's
animation, the same pixels `metaportrait-jax animate --checkpoint CKPT --official-data DATA --output OUT` writes
when its --batch-size equals the artifact's batch. (That command also writes an mp4; this script does not.)

Everything the artifact's program does not do is here: finding the frames (sorted globs, as the official loader),
reading the files, resizing sources to the model's size (PIL bicubic), drawing landmark line images (OpenCV
anti-aliased lines from the topology in the artifact), padding the last batch, and turning [0, 1] floats into
uint8 by `clip(x · 255)` and truncation. metaportrait_jax/eval/export.py describes the artifact's format.
"""

import argparse
import glob
import io
import json
import os
import pickle
import sys
import zipfile

import cv2
import jax
import numpy as np
from jax import export as jax_export
from PIL import Image

FORMAT, FORMAT_VERSION = "metaportrait-jax-export", 1


class RunError(Exception):
    """Unusable input: the message names the file."""


class Artifact:
    """The exported program, its weights, and what the header and topology arrays say about its inputs."""

    def __init__(self, path: str):
        if os.path.isfile(path) and not zipfile.is_zipfile(path):  # np.load's own guess (a pickle) would mislead
            raise RunError(f"{path}: not a metaportrait-jax export (not an .npz archive)")
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
            header = json.loads(bytes(arrays["header"]).decode())
        except FileNotFoundError:
            raise RunError(f"{path}: missing") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, EOFError) as e:
            raise RunError(f"{path}: not a metaportrait-jax export ({type(e).__name__}: {e})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise RunError(f"{path}: not a metaportrait-jax export (no {FORMAT!r} header)")
        if header.get("format_version") != FORMAT_VERSION:
            raise RunError(f"{path}: format version {header.get('format_version')}; this runner reads {FORMAT_VERSION}")
        platform = _this_platform()
        if platform not in header["platforms"]:
            raise RunError(f"{path}: exported for {', '.join(header['platforms'])}, but this machine runs JAX on "
                           f"{platform} (export again with --platforms {platform})")
        try:
            self.exported = jax_export.deserialize(bytearray(arrays["program"].tobytes()))
        except Exception as e:  # noqa: BLE001 -- whatever the reason, the file is unusable
            raise RunError(f"{path}: its program does not deserialise ({type(e).__name__}: {e})") from None
        self.weights = [arrays[f"w{i:05d}"] for i in range(header["weights"])]
        self.edges, self.colors = arrays["edges"], arrays["colors"]
        self.header = header
        self.batch, self.size = header["batch_size"], header["image_size"]
        self.num_points, self.id_dim = header["num_points"], header["id_dim"]

    def line_image(self, points: np.ndarray) -> np.ndarray:
        """`[N, 2]` float32 (x, y) in [0, 1] -> `[S, S, 3]` uint8: each edge in order, a 1-pixel anti-aliased line
        between the truncated pixel coordinates, in its (R, G, B) colour; later lines blend over earlier ones."""
        pixels = (points.astype(np.float32) * self.size).astype(np.int64)
        canvas = np.zeros((self.size, self.size, 3), np.uint8)
        for (i, j), color in zip(self.edges, self.colors):
            cv2.line(canvas, (int(pixels[i, 0]), int(pixels[i, 1])), (int(pixels[j, 0]), int(pixels[j, 1])),
                     tuple(int(c) for c in color), thickness=1, lineType=cv2.LINE_AA)
        return canvas

    def __call__(self, rows: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Up to `batch` input rows -> uint8 `[len(rows), S, S, 3]` frames (a short batch is padded with its last
        row: the program has one shape)."""
        valid = len(rows)
        rows = rows + [rows[-1]] * (self.batch - valid)
        inputs = {k: np.stack([r[k] for r in rows]) for k in self.header["inputs"]}
        prediction = np.asarray(self.exported.call(self.weights, inputs))[:valid]
        return np.clip(prediction * 255, 0, 255).astype(np.uint8)


def _this_platform() -> str:
    """JAX's backend under the names jax.export uses (cpu, cuda, rocm, tpu)."""
    device = jax.devices()[0]
    if device.platform != "gpu":
        return device.platform
    return "rocm" if "rocm" in device.client.platform_version.lower() else "cuda"


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # plain dicts, strings and numbers only: never run pickled code
        raise pickle.UnpicklingError(f"it references {module}.{name}")


def read_src_map(path: str) -> dict[str, str]:
    """`src_map_dict.pkl`: {driving frame file name: source key}."""
    try:
        with open(path, "rb") as f:
            data = _PlainUnpickler(io.BytesIO(f.read())).load()
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise RunError(f"{path}: not a plain-data pickle ({e})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: must hold a dict of frame file name -> source key")
    return {str(k): str(v) for k, v in data.items()}


def read_image(path: str, size: int) -> np.ndarray:
    """uint8 `[size, size, 3]` RGB, resized with PIL bicubic if it has another size (as the official loader)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.BICUBIC)
            return np.asarray(image, np.uint8)
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: not a readable image ({e})") from None


def read_array(path: str, shapes: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """A finite numeric `.npy` of one of `shapes`, as float32."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: not a readable .npy array ({e})") from None
    if array.shape not in shapes or not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
        raise RunError(f"{path}: must hold finite numbers of shape {' or '.join(map(str, shapes))}, got "
                       f"{array.dtype} {array.shape}")
    return array.astype(np.float32)


def driving_frames(root: str) -> list[tuple[str, str, str]]:
    """(frame file name, landmarks path, source key) of every driving frame, in the official loader's order: sorted
    recursive globs of <k>/imgs/**/*.png and <k>/ldmks/**/*_ldmk.npy, skipping names that start with s, r, c or _
    (the official glob `[!src_]*`)."""
    if not os.path.isdir(root):
        raise RunError(f"{root}: not a directory")
    src_map = read_src_map(os.path.join(root, "src_map_dict.pkl"))

    def files(sub: str, pattern: str) -> list[str]:
        found = glob.glob(os.path.join(root, "*", sub, "**", pattern), recursive=True)
        return sorted(p for p in found if not os.path.basename(p).startswith(("s", "r", "c", "_")))

    images, landmarks = files("imgs", "*.png"), files("ldmks", "*_ldmk.npy")
    if not images:
        raise RunError(f"{root}: no driving frames under <k>/imgs/")
    if len(images) != len(landmarks):
        raise RunError(f"{root}: {len(images)} frames in imgs/ but {len(landmarks)} ldmks/*_ldmk.npy files")
    frames = []
    for image, ldmk in zip(images, landmarks):
        name = os.path.basename(image)
        if os.path.basename(ldmk) != os.path.splitext(name)[0] + "_ldmk.npy":
            raise RunError(f"{ldmk}: does not match frame {image}")
        if name not in src_map:
            raise RunError(f"{image}: not in src_map_dict.pkl")
        frames.append((name, ldmk, src_map[name]))
    return frames


def animate(artifact_path: str, root: str, output: str) -> int:
    """Writes OUT/<frame name> for every driving frame of the official-layout folder `root`; returns the count."""
    model = Artifact(artifact_path)
    landmark_shape = ((model.num_points, 2),)
    sources = {}

    def source(key: str) -> dict[str, np.ndarray]:
        if key not in sources:
            prefix = os.path.join(root, f"src_{key}")
            sources[key] = {
                "source": read_image(prefix + ".png", model.size),
                "source_line": model.line_image(read_array(prefix + "_ldmk.npy", landmark_shape)),
                "source_id": read_array(prefix + "_id.npy", ((1, model.id_dim), (model.id_dim,))).reshape(-1)}
        return sources[key]

    frames = driving_frames(root)
    os.makedirs(output, exist_ok=True)
    for start in range(0, len(frames), model.batch):
        chunk = frames[start:start + model.batch]
        rows = []
        for _, ldmk, key in chunk:
            points = read_array(ldmk, landmark_shape)
            rows.append(dict(source(key), driving_line=model.line_image(points), driving_landmarks=points))
        for (name, _, _), frame in zip(chunk, model(rows)):
            Image.fromarray(frame).save(os.path.join(output, name))
    return len(frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact", help="the .npz `metaportrait-jax export` wrote")
    parser.add_argument("--data", required=True, help="a folder in the official inference layout")
    parser.add_argument("--output", required=True, help="folder for the animated frames (PNG, driving file names)")
    args = parser.parse_args(argv)
    try:
        count = animate(args.artifact, args.data, args.output)
    except RunError as e:
        print(f"run_exported.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {count} frames to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
