"""`export`: a generator checkpoint's animation forward as one self-contained file, serialised with `jax.export`,
whose model runs with JAX and numpy alone: no Flax, no metaportrait_jax (examples/run_exported.py is such a runner; it
adds Pillow for image files and OpenCV for the landmark lines).

What the exported function takes (batch B, image size S, N landmarks, D-d identities; one call animates B driving
frames of the official layout):

    weights            list of float32 arrays (the checkpoint's variables in the order of `weights_order`)
    source             uint8 [B, S, S, 3]  src_<k>.png as RGB, resized to S x S with PIL bicubic if it is not
    source_line        uint8 [B, S, S, 3]  the line image of src_<k>_ldmk.npy (see below)
    driving_line       uint8 [B, S, S, 3]  the line image of the driving frame's <frame>_ldmk.npy
    driving_landmarks  float32 [B, N, 2]   that .npy itself, (x, y) in [0, 1]
    source_id          float32 [B, D]      src_<k>_id.npy, flattened

and returns `prediction` float32 [B, S, S, 3] in [0, 1]; `animate --official-data` writes
`clip(prediction · 255)` truncated to uint8, and so must a runner.

Why these inputs. They are what the official-layout files hold, except the two line images. Everything derived from
landmarks that is plain arithmetic runs inside the exported graph in jnp: the topology's landmark subset in
[-1, 1], the gaze points and the padded mouth box, with the data pipeline's float32 arithmetic and truncations, and
numpy's slice rules at the borders (`_box_mask`), so they equal `ops.topology`'s numpy versions bit for bit.
uint8 pixels become floats by a 256-entry table of `k / 255` made with numpy: XLA turns a division by 255 into a
multiplication by its reciprocal, which differs from numpy's division in the last bit for some k.

The line images stay outside. They are OpenCV anti-aliased lines (`cv2.line(..., lineType=cv2.LINE_AA)`, drawn in
edge order, blending where they cross: `ops.rasterize`), and the checkpoints were trained on exactly those pixels;
a jnp rasteriser would have to copy OpenCV's fixed-point Wu-style algorithm and its tables bit for bit. So the
runner draws them with OpenCV from the topology stored in the artifact: for each edge (i, j) in `edges` order, a
1-pixel LINE_AA line from (int(x_i · S), int(y_i · S)) to (int(x_j · S), int(y_j · S)) (truncation) on a black
uint8 RGB canvas, colour `colors[e]` (R, G, B, passed to cv2 in that channel order).

The artifact is one uncompressed .npz (a zip; read with `np.load(allow_pickle=False)`):

    header    uint8 bytes of a JSON object: format, format_version, platforms, batch_size, image_size, num_points,
              id_dim, topology, inputs (name -> [shape, dtype]), outputs, weights (count), weights_order (each
              weight's variable path, for reading only), parameters,
              versions (jax, jaxlib, metaportrait_jax), checkpoint (its path when exported)
    program   uint8 bytes of `Exported.serialize()`: StableHLO lowered for every platform asked (default cpu, cuda
              and tpu in one module; `Exported.call` picks the caller's)
    edges     int32 [E, 2]; colors uint8 [E, 3]    the landmark topology's line drawing
    w00000 .. float32 (or the checkpoint's dtype) weights, the program's first argument in this order

Weights are arguments stored beside the program, not constants baked into it. Measured on the tiny model (1.9 M
parameters, batch 2): baked in, the program was 7.7 MB against 0.19 MB, and XLA's constant folding changed the
outputs by 1e-4 against the checkpoint's jitted forward (as arguments: bit-identical); large baked-in constants also
make compilation slow (spec/environment.md). Called with the same batch size in the same XLA environment, the
exported forward gives the same floats as `animate --official-data` (tests/test_export.py: identical PNGs). The
environment matters: XLA:CPU partitions convolutions by its device count, and 1 against 8 fake CPU devices
(`--xla_force_host_platform_device_count`) changed the outputs by 2e-6, enough to move a truncated uint8 pixel by one
level now and then.

The batch is fixed (`--batch`, default the checkpoint's `inference.batch_size`): a runner pads the last batch by
repeating its last row, as `animate` does, and keeps the first rows.
"""

import dataclasses
import json
import os
import time
import zipfile
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np
from jax import export as jax_export
from jax.tree_util import PyTreeDef

import metaportrait_jax
from metaportrait_jax.errors import UserError
from metaportrait_jax.models.generator import Generator
from metaportrait_jax.ops.topology import Topology, get_topology
from metaportrait_jax.train.checkpoint import load_model, require_network

FORMAT, FORMAT_VERSION = "metaportrait-jax-export", 1
PLATFORMS = ("cpu", "cuda", "tpu")
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for
# uint8 level k -> k / 255 as numpy's float32 division gives it (the data pipeline's `/ 255`).
_UNIT_LEVELS = np.arange(256, dtype=np.float32) / 255


class ExportError(UserError):
    """A file is not an exported animation forward, or an export was asked for with unusable settings."""


@dataclasses.dataclass(frozen=True)
class ExportReport:
    output: str
    bytes: int              # the artifact's size
    program_bytes: int      # the serialised StableHLO alone
    platforms: tuple[str, ...]
    batch_size: int
    parameters: int
    seconds: float          # loading the checkpoint, lowering and writing


def input_specs(model_config: ml_collections.ConfigDict, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The exported function's inputs after the weights (see the module docstring)."""
    s, n = model_config.image_size, get_topology(model_config.topology).num_points
    image = jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.uint8)
    return {"source": image, "source_line": image, "driving_line": image,
            "driving_landmarks": jax.ShapeDtypeStruct((batch_size, n, 2), jnp.float32),
            "source_id": jax.ShapeDtypeStruct((batch_size, model_config.id_dim), jnp.float32)}


def _slice_bounds(start: jax.Array, stop: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
    """What numpy's `a[max(0, start):min(length, stop)]` covers, as [lo, hi): a negative stop counts from the end
    (`ops.landmark_maps.box_mask` slices this way, so a box above or left of the image wraps as it does there)."""
    lo = jnp.minimum(jnp.maximum(0, start), length)
    hi = jnp.minimum(length, stop)
    hi = jnp.where(hi < 0, jnp.maximum(hi + length, 0), hi)
    return lo, hi


def _box_mask(subset: jax.Array, x_rows: tuple[int, int], y_rows: tuple[int, int], size: int, pad: int) -> jax.Array:
    """`ops.landmark_maps.box_mask` batched in jnp: `[B, S, 2]` subset points in [-1, 1] -> `[B, size, size, 1]`."""
    half = np.float32(size / 2)

    def bound(values: jax.Array) -> jax.Array:
        # int((v + 1) · size/2) in float32 truncates toward zero; the clip keeps absurd landmarks inside int32
        # without changing which pixels the slice covers.
        return jnp.clip((values + np.float32(1)) * half, -2.0 ** 30, 2.0 ** 30).astype(jnp.int32)

    left, right = bound(subset[:, x_rows[0], 0]), bound(subset[:, x_rows[1], 0])
    top, bottom = bound(subset[:, y_rows[0], 1]), bound(subset[:, y_rows[1], 1])
    y_lo, y_hi = _slice_bounds(top - pad, bottom + pad + 1, size)
    x_lo, x_hi = _slice_bounds(left - pad, right + pad + 1, size)
    pixels = jnp.arange(size)
    rows = (pixels >= y_lo[:, None]) & (pixels < y_hi[:, None])
    columns = (pixels >= x_lo[:, None]) & (pixels < x_hi[:, None])
    return (rows[:, :, None] & columns[:, None, :]).astype(jnp.float32)[..., None]


def generator_batch(inputs: dict[str, jax.Array], topology: Topology) -> dict[str, jax.Array]:
    """The exported inputs -> the generator's batch (`models.generator.BATCH_KEYS`), as the data pipeline makes it
    (`data.official_layout.OfficialLayout.example`), in jnp."""
    levels = jnp.asarray(_UNIT_LEVELS)
    subset = (2 * inputs["driving_landmarks"].astype(jnp.float32) - 1)[:, topology.subset, :]
    size = inputs["source"].shape[1]
    x_rows, y_rows = topology.mouth_box
    return {"source": levels[inputs["source"]], "source_line": levels[inputs["source_line"]],
            "driving_line": levels[inputs["driving_line"]],
            "mouth_mask": _box_mask(subset, x_rows, y_rows, size, topology.mouth_pad),
            "driving_gaze": subset[:, list(topology.gaze_rows), :],
            "source_id": inputs["source_id"].astype(jnp.float32)}


def animation_function(model_config: ml_collections.ConfigDict, tree: PyTreeDef) -> Callable:
    """`(weights, inputs) -> prediction [B, S, S, 3]`, jitted: `weights` the leaves of variables with structure
    `tree` (a list: the artifact stores them by position), `inputs` as `input_specs` describes."""
    topology = get_topology(model_config.topology)

    def animate(weights: list, inputs: dict) -> jax.Array:
        variables = jax.tree.unflatten(tree, weights)
        return Generator(model_config).apply(variables, generator_batch(inputs, topology))["prediction"]

    return jax.jit(animate)


def _check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    platforms = tuple(dict.fromkeys(p.strip().lower() for p in platforms if p.strip()))
    unknown = [p for p in platforms if p not in KNOWN_PLATFORMS]
    if not platforms or unknown:
        raise ExportError(f"--platforms: {', '.join(unknown) or 'none given'} "
                          f"{'is' if len(unknown) == 1 else 'are'} not a jax.export platform; "
                          f"choose from {', '.join(KNOWN_PLATFORMS)}")
    return platforms


def export(checkpoint: str, output: str, batch: int | None = None,
           platforms: Sequence[str] = PLATFORMS) -> ExportReport:
    """Writes the animation forward of the generator checkpoint `checkpoint` (weights included) to the artifact
    `output` (an .npz, see the module docstring), lowered for `platforms`, for `batch` driving frames per call
    (default the checkpoint's `inference.batch_size`)."""
    started = time.perf_counter()
    platforms = _check_platforms(platforms)
    if batch is not None and batch < 1:
        raise ExportError(f"--batch must be >= 1, got {batch}")
    config, variables, _ = load_model(checkpoint)
    require_network(config, "generator", checkpoint)
    model = config.model
    batch = batch or config.get("inference", {}).get("batch_size", 1)
    leaves, tree = jax.tree.flatten(variables)
    paths = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(
        variables)[0]]
    forward = animation_function(model, tree)
    specs = input_specs(model, batch)
    weight_specs = [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in leaves]
    exported = jax_export.export(forward, platforms=platforms)(weight_specs, specs)
    program = bytes(exported.serialize())
    topology = get_topology(model.topology)
    out = exported.out_avals[0]
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "platforms": list(exported.platforms),
        "batch_size": batch, "image_size": model.image_size, "num_points": topology.num_points,
        "id_dim": model.id_dim, "topology": topology.name,
        "inputs": {k: [list(v.shape), str(np.dtype(v.dtype))] for k, v in specs.items()},
        "outputs": {"prediction": [list(out.shape), str(np.dtype(out.dtype))]},
        "weights": len(leaves), "weights_order": paths, "parameters": int(sum(np.size(x) for x in leaves)),
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                     "metaportrait_jax": metaportrait_jax.__version__},
        "checkpoint": os.path.abspath(checkpoint),
    }
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8),
              "program": np.frombuffer(program, np.uint8),
              "edges": np.asarray(topology.edges, np.int32), "colors": np.asarray(topology.colors, np.uint8)}
    arrays.update({f"w{i:05d}": np.asarray(x) for i, x in enumerate(leaves)})
    output = os.path.abspath(output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    partial = output + ".partial"
    with open(partial, "wb") as f:  # an open file: np.savez would otherwise append .npz to the name
        np.savez(f, **arrays)
    os.replace(partial, output)  # a crash leaves no half-written artifact under the asked name
    return ExportReport(output, os.path.getsize(output), len(program), tuple(exported.platforms), batch,
                        header["parameters"], time.perf_counter() - started)


def load_exported(path: str) -> tuple[dict, jax_export.Exported, list[np.ndarray], dict[str, np.ndarray]]:
    """(header, Exported, weights, {"edges", "colors"}) of an artifact `export` wrote; ExportError naming `path` if
    it is not one (the runner example reads the format on its own, without this package)."""
    if os.path.isfile(path) and not zipfile.is_zipfile(path):  # np.load's own guess (a pickle) would mislead
        raise ExportError(f"{path}: not a metaportrait-jax export (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        header = json.loads(bytes(arrays["header"]).decode())
    except FileNotFoundError:
        raise ExportError(f"{path}: missing") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, EOFError) as e:
        raise ExportError(f"{path}: not a metaportrait-jax export ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ExportError(f"{path}: not a metaportrait-jax export (its header names no {FORMAT!r} format)")
    if header.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path}: export format version {header.get('format_version')}, this code reads "
                          f"{FORMAT_VERSION}")
    try:
        exported = jax_export.deserialize(bytearray(arrays["program"].tobytes()))
    except Exception as e:  # noqa: BLE001 -- any failure to read the program means the file is unusable
        raise ExportError(f"{path}: its program does not deserialise ({type(e).__name__}: {e})") from None
    weights = [arrays[f"w{i:05d}"] for i in range(header["weights"])]
    return header, exported, weights, {"edges": arrays["edges"], "colors": arrays["colors"]}
