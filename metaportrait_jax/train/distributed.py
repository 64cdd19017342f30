"""Joining a multi-process JAX job (`jax.distributed`): who the processes are, where the coordinator listens, and
how fast a dead process ends the others.

Each of the coordinator address, the process count and this process's id comes from the first source that has it:

1. explicit values (the CLI's `--coordinator host:port --num-processes N --process-id I`);
2. `METAPORTRAIT_COORDINATOR`, `METAPORTRAIT_NUM_PROCESSES`, `METAPORTRAIT_PROCESS_ID` (what `launch/local.sh` sets);
3. the cluster: SLURM (inside `srun`: `SLURM_PROCID`, `SLURM_NTASKS`, the first host of `SLURM_STEP_NODELIST`) or a
   Kubernetes JobSet (`JOB_COMPLETION_INDEX` plus the JobSet labels that `launch/jobset.yaml` exposes as variables;
   the coordinator is pod 0 under the JobSet's headless service).

`METAPORTRAIT_DISTRIBUTED=auto` instead leaves everything to `jax.distributed.initialize()`'s own detection: Cloud
TPU VMs and GKE TPU slices (`launch/tpu_vm.sh` sets it), Open MPI. Nothing set, or a process count of 1, means a
single process: nothing is started.

Why not always JAX's own detection: under SLURM it gives each task one device (`SLURM_LOCALID`), which is wrong for
the one-task-per-node layout (a task must see all of its node's GPUs); and on Kubernetes it needs the `kubernetes`
package plus a service account allowed to read pods and jobs, where the JobSet's hostnames need neither.

A dead process ends the others: the coordination service declares a process dead when its heartbeats stop for
`heartbeat_timeout_seconds`, and every other process then aborts (SIGABRT, exit status 134); if the dead one is
process 0 (which hosts the service), the others abort at once. So a killed process stops the whole job within about
the heartbeat timeout (default `DEFAULT_HEARTBEAT_TIMEOUT`, set with `METAPORTRAIT_HEARTBEAT_TIMEOUT`). A process
that fails with an exception leaves at once (`abandon_job`) rather than wait at exit for the others, which may be
blocked in a collective that waits for it.
"""

import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from typing import NoReturn

import jax
from jax.sharding import Mesh

from metaportrait_jax.errors import UserError

DEFAULT_HEARTBEAT_TIMEOUT = 60   # seconds; JAX's default is 100
DEFAULT_SHUTDOWN_TIMEOUT = 300   # seconds a finished process waits at exit for the others to finish too
JOBSET_COORDINATOR_PORT = 8476   # any free port works inside a pod; the manifest's containerPort must match


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """What `jax.distributed.initialize` is given; `coordinator_address` etc. are None when JAX detects them."""

    source: str                          # where the values came from: flags, environment, slurm, jobset, jax
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    local_device_ids: tuple[int, ...] | None = None   # None: every device of the host
    heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT
    shutdown_timeout_seconds: int = DEFAULT_SHUTDOWN_TIMEOUT

    def initialize_arguments(self) -> dict:
        """Keyword arguments for `jax.distributed.initialize`."""
        timeouts = dict(heartbeat_timeout_seconds=self.heartbeat_timeout_seconds,
                        shutdown_timeout_seconds=self.shutdown_timeout_seconds)
        if self.source == "jax":
            return timeouts
        # "deactivate": JAX would otherwise fill in the devices from SLURM_LOCALID, one device per process
        return dict(coordinator_address=self.coordinator_address, num_processes=self.num_processes,
                    process_id=self.process_id,
                    local_device_ids=None if self.local_device_ids is None else list(self.local_device_ids),
                    cluster_detection_method="deactivate", **timeouts)


def first_slurm_host(nodelist: str) -> str:
    """The first host name of a SLURM host list: `gpu[003-008,011],cpu1` -> `gpu003`, `a[1-2]-ib[3-4]` -> `a1-ib3`."""
    first = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?(.*)", nodelist)
    prefix, ranges, rest = first.groups()
    if ranges is None:
        if not prefix:
            raise UserError(f"cannot read a host name from the SLURM node list {nodelist!r}")
        return prefix
    start = re.split(r"[,-]", ranges)[0]
    if not start:
        raise UserError(f"cannot read a host name from the SLURM node list {nodelist!r}")
    suffix = first_slurm_host(rest) if rest and not rest.startswith(",") else ""
    return prefix + start + suffix


def _integer(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise UserError(f"{name} must be an integer, got {environ[name]!r}") from None


def _slurm(environ: Mapping[str, str]) -> dict | None:
    """Coordinator, count, id (and devices) of a task inside `srun`; None outside SLURM job steps."""
    if not all(name in environ for name in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID")):
        return None
    tasks = _integer(environ, "SLURM_NTASKS")
    nodes = _integer(environ, "SLURM_STEP_NUM_NODES") if "SLURM_STEP_NUM_NODES" in environ else tasks
    # A port that differs between jobs, so that two jobs sharing a node do not collide.
    port = environ.get("METAPORTRAIT_COORDINATOR_PORT", str(61440 + _integer(environ, "SLURM_JOB_ID") % 4096))
    found = {"coordinator": f"{first_slurm_host(environ['SLURM_STEP_NODELIST'])}:{port}",
             "num_processes": tasks, "process_id": _integer(environ, "SLURM_PROCID")}
    if tasks > nodes and "SLURM_LOCALID" in environ:  # several tasks per node: one device each
        found["local_device_ids"] = (_integer(environ, "SLURM_LOCALID"),)
    return found


def _jobset(environ: Mapping[str, str]) -> dict | None:
    """Coordinator and id of a pod of a JobSet's indexed job; None elsewhere.

    Pod hostnames are `<jobset>-<replicated job>-<job index>-<pod index>.<subdomain>`; `launch/jobset.yaml` exposes
    the JobSet labels as JOBSET_NAME, REPLICATED_JOB_NAME and JOB_INDEX. One replicated job with one replica whose
    pods are the processes: the process id is the pod's completion index.
    """
    if "JOB_COMPLETION_INDEX" not in environ or "JOBSET_NAME" not in environ:
        return None
    if environ.get("JOB_INDEX", "0") != "0":
        raise UserError(f"JOB_INDEX={environ['JOB_INDEX']}: give the replicated job one replica whose parallelism "
                         f"is the number of hosts (processes are numbered by JOB_COMPLETION_INDEX)")
    name = environ["JOBSET_NAME"]
    job = environ.get("REPLICATED_JOB_NAME", "workers")
    subdomain = environ.get("JOBSET_SUBDOMAIN", name)
    port = environ.get("METAPORTRAIT_COORDINATOR_PORT", str(JOBSET_COORDINATOR_PORT))
    return {"coordinator": f"{name}-{job}-0-0.{subdomain}:{port}",
            "process_id": _integer(environ, "JOB_COMPLETION_INDEX")}


def _timeout(environ: Mapping[str, str], name: str, default: int) -> int:
    value = _integer(environ, name) if name in environ else default
    if value <= 0:
        raise UserError(f"{name} must be a positive number of seconds, got {value}")
    return value


def process_group(environ: Mapping[str, str] | None = None, coordinator: str | None = None,
                  num_processes: int | None = None, process_id: int | None = None) -> ProcessGroup | None:
    """The multi-process job this process belongs to, or None for a single process (see the module docstring)."""
    environ = os.environ if environ is None else environ
    timeouts = dict(heartbeat_timeout_seconds=_timeout(environ, "METAPORTRAIT_HEARTBEAT_TIMEOUT",
                                                       DEFAULT_HEARTBEAT_TIMEOUT),
                    shutdown_timeout_seconds=_timeout(environ, "METAPORTRAIT_SHUTDOWN_TIMEOUT",
                                                      DEFAULT_SHUTDOWN_TIMEOUT))
    explicit = {k: v for k, v in (("coordinator", coordinator), ("num_processes", num_processes),
                                  ("process_id", process_id)) if v is not None}
    variables = {}
    for field, name in (("coordinator", "METAPORTRAIT_COORDINATOR"), ("num_processes", "METAPORTRAIT_NUM_PROCESSES"),
                        ("process_id", "METAPORTRAIT_PROCESS_ID")):
        if name in environ:
            variables[field] = environ[name] if field == "coordinator" else _integer(environ, name)
    mode = environ.get("METAPORTRAIT_DISTRIBUTED", "")
    if mode not in ("", "auto"):
        raise UserError(f"METAPORTRAIT_DISTRIBUTED must be 'auto' or unset, got {mode!r}")
    if mode == "auto" and not explicit and not variables:
        return ProcessGroup("jax", None, None, None, **timeouts)
    cluster, cluster_name = _slurm(environ), "slurm"
    if cluster is None:
        cluster, cluster_name = _jobset(environ), "jobset"
    merged = {**(cluster or {}), **variables, **explicit}
    if not {"coordinator", "num_processes", "process_id"} & set(merged):
        return None
    source = "flags" if explicit else "environment" if variables else cluster_name
    missing = [field for field in ("coordinator", "num_processes", "process_id") if field not in merged]
    if missing:
        raise UserError(f"a multi-process run needs a coordinator address, a process count and a process id; "
                         f"missing {', '.join(missing)} (flags --coordinator/--num-processes/--process-id or "
                         f"METAPORTRAIT_COORDINATOR/_NUM_PROCESSES/_PROCESS_ID)")
    host, _, port = merged["coordinator"].rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"the coordinator address must look like host:port, got {merged['coordinator']!r}")
    count, index = merged["num_processes"], merged["process_id"]
    if count < 1:
        raise UserError(f"the process count must be positive, got {count}")
    if not 0 <= index < count:
        raise UserError(f"the process id must be in [0, {count}), got {index}")
    if count == 1:
        return None
    # SLURM's one-device-per-task rule only holds for processes that SLURM numbered
    devices = None if "process_id" in {**variables, **explicit} else merged.get("local_device_ids")
    return ProcessGroup(source, merged["coordinator"], count, index, devices, **timeouts)


def initialize_processes(coordinator: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None) -> ProcessGroup | None:
    """Joins the multi-process job the arguments and the environment describe (a no-op for a single process) and
    prints this process's place in it. Must run before anything touches a JAX device."""
    group = process_group(None, coordinator, num_processes, process_id)
    if group is None:
        return None
    jax.distributed.initialize(**group.initialize_arguments())
    print(f"process {jax.process_index()} of {jax.process_count()} ({group.source}; coordinator "
          f"{group.coordinator_address or 'found by JAX'}): {jax.local_device_count()} local of "
          f"{jax.device_count()} {jax.default_backend()} devices; a silent process counts as dead after "
          f"{group.heartbeat_timeout_seconds} s", flush=True)
    return group


def describe_topology(mesh: Mesh) -> str:
    """One line: processes, devices and the mesh shape."""
    axes = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
    return (f"{jax.process_count()} process(es) x {jax.local_device_count()} {jax.default_backend()} device(s) = "
            f"{jax.device_count()} devices; mesh {axes}")


def in_multiprocess_job() -> bool:
    return jax.distributed.is_initialized() and jax.process_count() > 1


def abandon_job(status: int) -> NoReturn:
    """Ends this process now, skipping the exit-time barrier at which a finished process waits for the others.

    For a failed process of a multi-process job: the others may be blocked in a collective that waits for this one,
    so waiting for them would hang until the shutdown timeout. Exiting at once lets the coordination service see
    the failure (at once if this is process 0, else after the heartbeat timeout) and stop the others.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
