"""One device mesh for every step, and how batches and parameters are laid out on it.

Two named axes: `data` (batch rows only) and `fsdp` (batch rows *and* parameter / optimiser-state shards). With
`fsdp=1` this is plain data parallelism; the same code runs on 1 CPU, 8 fake CPU devices, GPU nodes and TPU pods,
only the mesh shape changes. Rules:

- batches: leading axis split over (`data`, `fsdp`);
- parameters and optimiser state: the largest dimension divisible by the `fsdp` size is split over `fsdp`
  (others replicated); scalars and small arrays (< `min_shard_size` elements) are replicated.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def initialize_processes() -> None:
    """Joins a multi-process run when the environment asks for one; a no-op for a single process.

    `METAPORTRAIT_COORDINATOR=host:port`, `METAPORTRAIT_NUM_PROCESSES` and `METAPORTRAIT_PROCESS_ID` name the run
    explicitly (`launch/local.sh` sets them); `METAPORTRAIT_DISTRIBUTED=auto` lets JAX read SLURM, Cloud TPU or
    Kubernetes settings itself.
    """
    if os.environ.get("METAPORTRAIT_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
    elif "METAPORTRAIT_COORDINATOR" in os.environ:
        jax.distributed.initialize(os.environ["METAPORTRAIT_COORDINATOR"],
                                   num_processes=int(os.environ["METAPORTRAIT_NUM_PROCESSES"]),
                                   process_id=int(os.environ["METAPORTRAIT_PROCESS_ID"]))


def make_mesh(fsdp: int = 1, devices: list | None = None) -> Mesh:
    """`[data, fsdp]` mesh over all (or the given) devices; `data` = device count / `fsdp`."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"fsdp={fsdp} must divide the {len(devices)} devices")
    return Mesh(np.asarray(devices).reshape(len(devices) // fsdp, fsdp), (DATA_AXIS, FSDP_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def parameter_sharding(shape: tuple[int, ...], mesh: Mesh, min_shard_size: int = 2 ** 14) -> NamedSharding:
    """The FSDP rule for one parameter (or optimiser-state) array of `shape`."""
    shards = mesh.shape[FSDP_AXIS]
    if shards == 1 or int(np.prod(shape, dtype=np.int64)) < min_shard_size:
        return replicated(mesh)
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % shards == 0:
            spec = [None] * len(shape)
            spec[dim] = FSDP_AXIS
            return NamedSharding(mesh, PartitionSpec(*spec))
    return replicated(mesh)


def tree_sharding(tree, mesh: Mesh):
    """Shardings for every array leaf of `tree` (arrays or `jax.ShapeDtypeStruct`s) by the FSDP rule."""
    return jax.tree.map(lambda x: parameter_sharding(tuple(x.shape), mesh), tree)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """This process's rows -> global `jax.Array`s split over the batch axes (process p's rows follow p − 1's)."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
