#!/usr/bin/env bash
# metaportrait-jax on a Cloud TPU VM slice: create it, copy this checkout to every worker, install, run one process
# per worker (JAX finds the slice's workers and coordinator itself: METAPORTRAIT_DISTRIBUTED=auto), collect every
# worker's log, delete the slice (also after a failure or Ctrl-C).
#
#   ZONE=us-central2-b ACCELERATOR_TYPE=v4-16 launch/tpu_vm.sh train --config configs/pretrain_warp.py:official_256 \
#       --workdir /mnt/shared/runs/warp --no-progress
#
# Knobs (environment):
#   ZONE (required), ACCELERATOR_TYPE (default v4-16: 2 workers x 4 chips), RUNTIME_VERSION
#   (default tpu-ubuntu2204-base), TPU_NAME (default metaportrait-<time>), GCP_PROJECT (default: gcloud's),
#   SPOT=1 (spot capacity), KEEP_TPU=1 (do not delete the slice), LOG_DIR (default tpu_logs/<name>),
#   SHARED_STORAGE_COMMAND: run on every worker before training, to mount the storage that holds --workdir and the
#   data (e.g. a Filestore NFS export or a gcsfuse bucket; the work directory must be one folder seen by all workers).
# The config's train.batch_size is the global batch (per-host batch = global / workers), train.fsdp the devices per
# parameter shard.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: ZONE=... $0 SUBCOMMAND [ARGS...]" >&2
  exit 2
fi
zone=${ZONE:?set ZONE, e.g. ZONE=us-central2-b}
name=${TPU_NAME:-metaportrait-$(date +%Y%m%d-%H%M%S)}
accelerator=${ACCELERATOR_TYPE:-v4-16}
runtime=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
log_dir=${LOG_DIR:-tpu_logs/${name}}
project_flags=()
if [[ -n ${GCP_PROJECT:-} ]]; then
  project_flags=(--project "${GCP_PROJECT}")
fi
tpu() {
  gcloud compute tpus tpu-vm "$1" "${name}" --zone "${zone}" "${project_flags[@]}" "${@:2}"
}

create_flags=(--accelerator-type "${accelerator}" --version "${runtime}")
if [[ ${SPOT:-0} == 1 ]]; then
  create_flags+=(--spot)
fi
tpu create "${create_flags[@]}"
delete_slice() {
  if [[ ${KEEP_TPU:-0} == 1 ]]; then
    echo "tpu_vm.sh: keeping ${name}; delete it with: gcloud compute tpus tpu-vm delete ${name} --zone ${zone}" >&2
  else
    tpu delete --quiet
  fi
}
trap delete_slice EXIT

# This checkout, without local environments and outputs, to every worker.
archive=$(mktemp --suffix=.tar.gz)
tar -czf "${archive}" --exclude=.venv --exclude=.git --exclude=results --exclude=tpu_logs -C "$(dirname "$0")/.." .
tpu scp "${archive}" "${name}:metaportrait.tar.gz" --worker=all
rm -f "${archive}"
# The project's own install with the TPU extra (`make install ACCEL=tpu`: libtpu for this jax, the tested versions
# of requirements/constraints.txt). The TPU VM images are Ubuntu 22.04, whose python3 is 3.10 and too old for jax
# 0.10: Ubuntu's python3.11 (and make, venv) are installed first. Knob: TPU_PYTHON (default python3.11).
tpu_python=${TPU_PYTHON:-python3.11}
setup="sudo apt-get update -q && sudo apt-get install -y -q make ${tpu_python} ${tpu_python}-venv &&
  mkdir -p metaportrait && tar -xzf metaportrait.tar.gz -C metaportrait && cd metaportrait &&
  make install ACCEL=tpu PYTHON=${tpu_python}"
tpu ssh --worker=all --command "${setup}"
if [[ -n ${SHARED_STORAGE_COMMAND:-} ]]; then
  tpu ssh --worker=all --command "${SHARED_STORAGE_COMMAND}"
fi

# One process per worker, all at once; each logs to ~/run.log on its worker. A failed worker makes the others stop
# (JAX's heartbeat timeout, METAPORTRAIT_HEARTBEAT_TIMEOUT seconds), so this returns.
printf -v command '%q ' "$@"
status=0
tpu ssh --worker=all --command "cd metaportrait && METAPORTRAIT_DISTRIBUTED=auto \
  .venv/bin/metaportrait-jax ${command} > \$HOME/run.log 2>&1" || status=$?

mkdir -p "${log_dir}"
workers=$(tpu describe --format='value(networkEndpoints.ipAddress)' | sed 's/[;,]/\n/g' | grep -c .)
for ((worker = 0; worker < workers; worker++)); do
  tpu scp "${name}:run.log" "${log_dir}/worker_${worker}.log" --worker="${worker}" ||
    echo "tpu_vm.sh: could not fetch worker ${worker}'s log" >&2
done
echo "tpu_vm.sh: exit status ${status}; logs in ${log_dir}" >&2
exit "${status}"
