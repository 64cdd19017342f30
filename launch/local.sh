#!/usr/bin/env bash
# Runs N processes of one metaportrait-jax command on this machine as one multi-process JAX job on fake CPU devices
# (collectives over gloo): what a multi-host cluster does, on one box. Each process gets the coordinator address,
# the process count and its id through METAPORTRAIT_* variables; process 0 prints to this terminal, process i > 0
# logs to $LOG_DIR/process_<i>.log. When one process fails, the others are killed and this script exits with the
# failed process's status; Ctrl-C / SIGTERM are passed on to every process (each saves a checkpoint and stops).
#
#   launch/local.sh 2 train --config configs/pretrain_warp.py:tiny --workdir runs/warp_2proc
#   DEVICES_PER_PROCESS=4 launch/local.sh 2 train ...            # 2 processes x 4 fake CPU devices
#   METAPORTRAIT_BIN=".venv/bin/python -m metaportrait_jax.cli" launch/local.sh 2 train ...
#
# Knobs (environment): DEVICES_PER_PROCESS (default 2), PORT (coordinator port, default random),
# LOG_DIR (default a new temporary folder), METAPORTRAIT_BIN (the command, split on spaces; default
# metaportrait-jax), METAPORTRAIT_HEARTBEAT_TIMEOUT (seconds before a silent process counts as dead), PJRT_NPROC
# (threads per process; default max(the job's device count, cores), see below).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 NUM_PROCESSES SUBCOMMAND [ARGS...]" >&2
  exit 2
fi
num_processes=$1
shift
if ! [[ $num_processes =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: NUM_PROCESSES must be a positive integer, got '${num_processes}'" >&2
  exit 2
fi
devices_per_process=${DEVICES_PER_PROCESS:-2}
if ! [[ $devices_per_process =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: DEVICES_PER_PROCESS must be a positive integer, got '${devices_per_process}'" >&2
  exit 2
fi
read -r -a command <<<"${METAPORTRAIT_BIN:-metaportrait-jax}"
port=${PORT:-$((20000 + RANDOM % 20000))}
log_dir=${LOG_DIR:-$(mktemp -d)}
mkdir -p "${log_dir}"

export METAPORTRAIT_COORDINATOR="127.0.0.1:${port}" METAPORTRAIT_NUM_PROCESSES="${num_processes}"
export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=${devices_per_process} ${XLA_FLAGS:-}"
# XLA:CPU splits each kernel into as many parts as its process's thread pool has threads, max(cores, local devices),
# and a convolution or reduction split differently rounds differently. One pool size for the job's device count, in
# every process, makes 1 x 4 and 2 x 2 devices compile the same kernels (and so end with the same bits): the job's
# device count, or the cores if there are more (fewer threads than cores would only be slower).
job_devices=$((num_processes * devices_per_process))
cores=$(nproc)
export PJRT_NPROC=${PJRT_NPROC:-$((job_devices > cores ? job_devices : cores))}
if ((num_processes > 1)); then
  # No persistent compilation cache: on CPU only process 0 would find its programs there and the others would
  # compile them again, reaching the first collective later than gloo's 30 s window allows.
  unset JAX_COMPILATION_CACHE_DIR
fi

pids=()
declare -A process_of_pid
for ((i = 0; i < num_processes; i++)); do
  if ((i == 0)); then
    METAPORTRAIT_PROCESS_ID=0 "${command[@]}" "$@" &
  else
    METAPORTRAIT_PROCESS_ID=$i "${command[@]}" "$@" >"${log_dir}/process_${i}.log" 2>&1 &
  fi
  pids+=($!)
  process_of_pid[$!]=$i
done
echo "local.sh: ${num_processes} processes x ${devices_per_process} CPU devices, coordinator 127.0.0.1:${port}," \
  "pids ${pids[*]}, logs of processes 1+ in ${log_dir}" >&2

forward_signal() {
  kill -TERM "${!process_of_pid[@]}" 2>/dev/null || true
}
trap forward_signal INT TERM

# Wait for the processes one at a time; the first failure ends the job: peers blocked in a collective with a dead
# process would otherwise only stop when JAX's heartbeat timeout fires.
status=0
while ((${#process_of_pid[@]} > 0)); do
  finished=""
  code=0
  wait -n -p finished "${!process_of_pid[@]}" || code=$?
  if [[ -z $finished ]]; then
    continue # a forwarded signal interrupted the wait; the processes save a checkpoint and stop
  fi
  failed=${process_of_pid[$finished]}
  unset "process_of_pid[$finished]"
  if ((code != 0)); then
    echo "local.sh: process ${failed} (pid ${finished}) exited with status ${code}; killing the others;" \
      "logs in ${log_dir}" >&2
    ((${#process_of_pid[@]} == 0)) || kill -KILL "${!process_of_pid[@]}" 2>/dev/null || true
    status=${code}
    break
  fi
done
wait || true
exit "${status}"
