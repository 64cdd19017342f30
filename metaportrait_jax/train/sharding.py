"""One device mesh for every step, and how batches and parameters are laid out on it.

Two named axes: `data` (batch rows only) and `fsdp` (batch rows *and* parameter / optimiser-state shards). With
`fsdp=1` this is plain data parallelism; the same code runs on 1 CPU, 8 fake CPU devices, GPU nodes and TPU pods,
only the mesh shape changes. Rules:

- batches: leading axis split over (`data`, `fsdp`);
- parameters and optimiser state: the largest dimension divisible by the `fsdp` size is split over `fsdp`
  (others replicated); scalars and small arrays (< `min_shard_size` elements) are replicated.

Gradient means over devices are XLA all-reduces by default. Their summation order depends on how the devices are
spread over processes, and Adam turns round-off into whole ±lr steps where a gradient is round-off alone (a bias
before an instance norm). `train.gradient_reduction="fixed_order"` instead gathers the per-device values (exact) and
sums them in device order on every device (`per_device`): the same bits on 1 process x 4 devices as
on 2 x 2, for device-count x gradient memory and traffic.
"""

import functools
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from metaportrait_jax.meta.adapt import tree_mean

# Joining a multi-process job lives in `distributed`; subcommands import it from here too.
from metaportrait_jax.train.distributed import initialize_processes  # noqa: F401

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


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


GRADIENT_REDUCTIONS = ("all_reduce", "fixed_order")


def batch_devices() -> int:
    """Devices the batch is split over in the mesh set by `jax.set_mesh` (1 without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else mesh.shape[DATA_AXIS] * mesh.shape[FSDP_AXIS]


def gathered(tree):
    """`tree` whole on every device (an all-gather: exact), so that what is computed from it next is computed the
    same way on every device, whatever the topology."""
    return tree if jax.sharding.get_abstract_mesh().empty else jax.lax.with_sharding_constraint(tree, PartitionSpec())


def jit_step(step, state_sharding=None, batch_sharding=None, metrics_sharding=None):
    """`step(state, batch, ...) -> (state, metrics)` as one program with the state donated (shardings as given,
    else inferred; `batch_sharding` may be None: as its value comes)."""
    if state_sharding is None:
        return jax.jit(step, donate_argnums=0)
    return jax.jit(step, donate_argnums=0, out_shardings=(state_sharding, metrics_sharding),
                   **({} if batch_sharding is None else dict(in_shardings=(state_sharding, batch_sharding))))


def per_device(fn: Callable, shared, batch, fixed_order: bool):
    """`fn(shared, rows) -> (means, per_row, common)` run on each batch device's own rows of `batch` (`shard_map`
    over the mesh set by `jax.set_mesh`); returns (`means` averaged over the devices, `per_row` of all rows,
    `common`: values every device computes alike, taken as they are). `shared` (e.g. parameters) is whole on every
    device. Without a mesh: `fn(shared, batch)`.

    The average is an all-reduce, or with `fixed_order` an all-gather (exact) and then the same sum in the same order
    on every device: an all-reduce's summation order depends on how the devices are spread over processes.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(shared, batch)

    def on_device(shared, rows):
        means, per_row, common = fn(shared, rows)
        if fixed_order:
            return tree_mean(jax.lax.all_gather(means, BATCH_AXES)), per_row, common
        return jax.lax.pmean(means, BATCH_AXES), per_row, common

    whole, rows = PartitionSpec(), PartitionSpec(BATCH_AXES)
    return jax.shard_map(on_device, in_specs=(whole, rows), out_specs=(whole, rows, whole), check_vma=False)(
        shared, batch)


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


@functools.lru_cache(maxsize=16)
def process_rows(mesh: Mesh, global_rows: int) -> range:
    """The rows of a global batch of `global_rows` that this process's devices hold in `mesh`."""
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_rows,))
    held = sorted({row for (rows,) in index_map.values() for row in range(*rows.indices(global_rows))})
    if held != list(range(held[0], held[-1] + 1)):
        raise ValueError(f"process {jax.process_index()}'s devices hold rows {held} of the batch, not one block")
    return range(held[0], held[-1] + 1)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """This process's rows -> global `jax.Array`s split over the batch axes.

    Process p of P holds rows [p·b, (p+1)·b) (b = local rows), which is what the input pipeline gives it: so the global
    batch does not depend on the process count. A mesh whose device order puts another block of rows on this
    process's devices is refused rather than silently reordering the batch.
    """
    local_rows = len(jax.tree.leaves(local_batch)[0])
    expected = range(jax.process_index() * local_rows, (jax.process_index() + 1) * local_rows)
    held = process_rows(mesh, local_rows * jax.process_count())
    if held != expected:
        raise ValueError(f"process {jax.process_index()}'s devices hold batch rows [{held.start}, {held.stop}) of the "
                         f"mesh, but its input pipeline reads rows [{expected.start}, {expected.stop}); order the "
                         f"mesh's devices by process")
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
