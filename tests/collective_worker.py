"""A stand-in process of a multi-process job for tests, without a model to compile: joins the job as the CLI does
(METAPORTRAIT_* variables), then sums over all devices of all processes in a loop, printing `step N`, until any
process is signalled (SIGTERM), when every process prints `stopped at N` and exits."""

import time
import traceback

import jax
import numpy as np

from metaportrait_jax.train.distributed import abandon_job, initialize_processes
from metaportrait_jax.train.loop import Preemption, any_process, host_value
from metaportrait_jax.train.sharding import global_batch, make_mesh, replicated


def main() -> None:
    initialize_processes()
    mesh = make_mesh()
    total = jax.jit(lambda x: x.sum(), out_shardings=replicated(mesh))
    with Preemption() as preemption:
        for step in range(1, 10 ** 6):
            rows = global_batch({"x": np.ones(jax.local_device_count(), np.float32)}, mesh)["x"]
            print(f"step {step}: {float(host_value(total(rows)))}", flush=True)
            (stopping,) = any_process(preemption.requested)
            if stopping:
                print(f"stopped at {step}", flush=True)
                break
            time.sleep(0.05)


if __name__ == "__main__":
    try:
        main()
    except Exception:  # as the CLI does: leave at once instead of waiting at exit for the other process
        traceback.print_exc()
        abandon_job(1)
