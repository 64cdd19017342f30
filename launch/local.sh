#!/usr/bin/env bash
# Runs N processes of one metaportrait-jax command on this machine as one multi-process JAX job (CPU collectives via
# gloo): what a multi-host cluster does, on one box. Each process gets the coordinator address, the process count
# and its id; process 0 prints, the others log to $LOG_DIR/process_<i>.log.
#
#   launch/local.sh 2 train --config configs/pretrain_warp.py:tiny --workdir runs/warp_2proc
#   DEVICES_PER_PROCESS=4 launch/local.sh 2 train ...        # 2 processes x 4 fake CPU devices
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 NUM_PROCESSES SUBCOMMAND [ARGS...]" >&2
  exit 2
fi
num_processes=$1
shift
port=${PORT:-$((20000 + RANDOM % 20000))}
log_dir=${LOG_DIR:-$(mktemp -d)}
bin=${METAPORTRAIT_BIN:-metaportrait-jax}
export METAPORTRAIT_COORDINATOR="127.0.0.1:${port}" METAPORTRAIT_NUM_PROCESSES="${num_processes}"
export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1} ${XLA_FLAGS:-}"
pids=()
for ((i = 1; i < num_processes; i++)); do
  METAPORTRAIT_PROCESS_ID=$i "$bin" "$@" --no-progress >"${log_dir}/process_${i}.log" 2>&1 &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
status=0
METAPORTRAIT_PROCESS_ID=0 "$bin" "$@" || status=$?
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
[[ $status -eq 0 ]] || echo "a process failed; logs in ${log_dir}" >&2
exit $status
