"""One device mesh for every step, and how batches and parameters are laid out on it.

The mesh has two named axes: `data` (batch rows) and `model` (parameter sharding; size 1 unless asked for). The same
code runs on 1 CPU, 8 fake CPU devices, a GPU node or a TPU pod slice; only the mesh shape changes.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(model_parallel: int = 1, devices: list | None = None) -> Mesh:
    """`[data, model]` mesh over all (or the given) devices; `data` = device count / `model_parallel`."""
    devices = list(jax.devices() if devices is None else devices)
    if model_parallel < 1 or len(devices) % model_parallel:
        raise ValueError(f"model_parallel={model_parallel} must divide the {len(devices)} devices")
    grid = np.asarray(devices).reshape(len(devices) // model_parallel, model_parallel)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """This process's rows -> global `jax.Array`s split over `data` (rows of process p follow those of p - 1)."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
