"""Launch recipes without a cluster: what the process-group detection would hand to `jax.distributed.initialize` under
simulated SLURM / JobSet / local.sh / flag settings, the scripts' syntax, the JobSet manifest, and local.sh's
stop-everything-when-one-process-fails rule (with stand-in commands)."""

import os
import shutil
import subprocess
import time

import pytest
import yaml

from metaportrait_jax.cli import main
from metaportrait_jax.train.distributed import (DEFAULT_HEARTBEAT_TIMEOUT, JOBSET_COORDINATOR_PORT, first_slurm_host,
                                                process_group)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = ("local.sh", "slurm.sbatch", "tpu_vm.sh")

# What srun gives task 3 of a 4-node job with one task per node.
SLURM_ONE_TASK_PER_NODE = {"SLURM_JOB_ID": "123456", "SLURM_STEP_NODELIST": "gpu[017-018,020],gpu100",
                           "SLURM_NTASKS": "4", "SLURM_STEP_NUM_NODES": "4", "SLURM_PROCID": "3",
                           "SLURM_LOCALID": "0"}
# What a pod of launch/jobset.yaml sees (JOBSET_NAME etc. come from the JobSet labels via the downward API).
JOBSET_POD = {"JOB_COMPLETION_INDEX": "2", "JOBSET_NAME": "metaportrait", "REPLICATED_JOB_NAME": "workers",
              "JOB_INDEX": "0", "METAPORTRAIT_NUM_PROCESSES": "4", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}


@pytest.mark.parametrize("nodelist,host", [("node7", "node7"), ("node7,node9", "node7"),
                                           ("gpu[003-008,011],cpu1", "gpu003"), ("gpu[11,3-4]", "gpu11"),
                                           ("rack[2-3]-ib[07-09]", "rack2-ib07"), ("a-b[1-2],c", "a-b1")])
def test_first_slurm_host_reads_compressed_host_lists(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_single_process_environments_start_nothing():
    assert process_group({}) is None
    assert process_group({"METAPORTRAIT_COORDINATOR": "h:1", "METAPORTRAIT_NUM_PROCESSES": "1",
                          "METAPORTRAIT_PROCESS_ID": "0"}) is None
    assert process_group({**SLURM_ONE_TASK_PER_NODE, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    # an salloc shell (no job step) is not a multi-process job
    assert process_group({k: v for k, v in SLURM_ONE_TASK_PER_NODE.items() if k != "SLURM_STEP_NODELIST"}) is None


def test_slurm_one_task_per_node_sees_all_its_devices():
    group = process_group(SLURM_ONE_TASK_PER_NODE)
    assert group.source == "slurm"
    arguments = group.initialize_arguments()
    assert arguments == dict(coordinator_address=f"gpu017:{61440 + 123456 % 4096}", num_processes=4, process_id=3,
                             local_device_ids=None, cluster_detection_method="deactivate",
                             heartbeat_timeout_seconds=DEFAULT_HEARTBEAT_TIMEOUT, shutdown_timeout_seconds=300)


def test_slurm_one_task_per_device_and_a_fixed_port():
    environ = {**SLURM_ONE_TASK_PER_NODE, "SLURM_NTASKS": "8", "SLURM_STEP_NUM_NODES": "2", "SLURM_PROCID": "5",
               "SLURM_LOCALID": "1", "METAPORTRAIT_COORDINATOR_PORT": "4321"}
    arguments = process_group(environ).initialize_arguments()
    assert arguments["coordinator_address"] == "gpu017:4321"
    assert (arguments["num_processes"], arguments["process_id"], arguments["local_device_ids"]) == (8, 5, [1])


def test_jobset_pods_find_pod_zero_under_the_headless_service():
    group = process_group(JOBSET_POD)
    assert (group.source, group.num_processes, group.process_id) == ("environment", 4, 2)
    assert group.coordinator_address == f"metaportrait-workers-0-0.metaportrait:{JOBSET_COORDINATOR_PORT}"
    custom = process_group({**JOBSET_POD, "JOBSET_SUBDOMAIN": "net", "METAPORTRAIT_COORDINATOR_PORT": "99"})
    assert custom.coordinator_address == "metaportrait-workers-0-0.net:99"
    with pytest.raises(ValueError, match="JOB_INDEX=1"):
        process_group({**JOBSET_POD, "JOB_INDEX": "1"})


def test_flags_win_over_variables_and_the_cluster():
    environ = {**SLURM_ONE_TASK_PER_NODE, "METAPORTRAIT_COORDINATOR": "env-host:1", "METAPORTRAIT_HEARTBEAT_TIMEOUT": "7"}
    group = process_group(environ, coordinator="flag-host:2", process_id=1)
    assert (group.source, group.coordinator_address, group.num_processes, group.process_id) == (
        "flags", "flag-host:2", 4, 1)
    assert group.heartbeat_timeout_seconds == 7
    assert process_group(environ).coordinator_address == "env-host:1"


def test_auto_leaves_detection_to_jax():
    group = process_group({"METAPORTRAIT_DISTRIBUTED": "auto"})
    assert group.initialize_arguments() == dict(heartbeat_timeout_seconds=DEFAULT_HEARTBEAT_TIMEOUT,
                                                shutdown_timeout_seconds=300)


@pytest.mark.parametrize("environ,flags,message", [
    ({"METAPORTRAIT_COORDINATOR": "h:1"}, {}, "missing num_processes, process_id"),
    ({}, {"coordinator": "nohostport", "num_processes": 2, "process_id": 0}, "host:port, got 'nohostport'"),
    ({}, {"coordinator": "h:1", "num_processes": 2, "process_id": 2}, r"in \[0, 2\), got 2"),
    ({"METAPORTRAIT_NUM_PROCESSES": "two"}, {}, "METAPORTRAIT_NUM_PROCESSES must be an integer, got 'two'"),
    ({"METAPORTRAIT_HEARTBEAT_TIMEOUT": "0"}, {}, "positive number of seconds, got 0"),
    ({"METAPORTRAIT_DISTRIBUTED": "yes"}, {}, "'auto' or unset, got 'yes'"),
])
def test_bad_settings_name_the_value(environ, flags, message):
    with pytest.raises(ValueError, match=message):
        process_group(environ, **flags)


def test_cli_reports_bad_process_flags_in_one_line(capsys):
    assert main(["train", "--config", "configs/pretrain_warp.py:tiny", "--workdir", "unused",
                 "--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"]) == 2
    assert "host:port, got 'localhost'" in capsys.readouterr().err


@pytest.mark.parametrize("script", SCRIPTS)
def test_launch_scripts_parse(script):
    subprocess.run(["bash", "-n", os.path.join(LAUNCH, script)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "--severity=warning", os.path.join(LAUNCH, script)], check=True)


def test_jobset_manifest_is_an_indexed_jobset_that_sets_what_the_detection_reads():
    with open(os.path.join(LAUNCH, "jobset.yaml")) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    (jobset,) = [d for d in documents if d["kind"] == "JobSet"]
    assert jobset["apiVersion"].startswith("jobset.x-k8s.io/")
    assert jobset["spec"]["network"]["enableDNSHostnames"] is True
    (replicated,) = jobset["spec"]["replicatedJobs"]
    assert replicated["replicas"] == 1
    job = replicated["template"]["spec"]
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"]
    (container,) = job["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["METAPORTRAIT_NUM_PROCESSES"]["value"] == str(job["parallelism"])
    assert env["JOBSET_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['jobset.sigs.k8s.io/jobset-name']")
    assert env["REPLICATED_JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['jobset.sigs.k8s.io/replicatedjob-name']")
    assert env["JOB_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['jobset.sigs.k8s.io/job-index']"
    assert {p["containerPort"] for p in container["ports"]} >= {JOBSET_COORDINATOR_PORT}
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1


def _stand_in(tmp_path, fail_process: int, exit_code: int = 3) -> str:
    """A command for local.sh that records its pid; process `fail_process` exits with `exit_code`, the rest hang."""
    script = tmp_path / "stand_in.sh"
    script.write_text(f"""#!/usr/bin/env bash
echo $$ > "{tmp_path}/pid_$METAPORTRAIT_PROCESS_ID"
if [[ $METAPORTRAIT_PROCESS_ID == {fail_process} ]]; then sleep 1; exit {exit_code}; fi
exec sleep 300
""")
    return f"bash {script}"


@pytest.mark.parametrize("fail_process", [0, 1])
def test_local_sh_kills_the_other_processes_when_one_fails(tmp_path, fail_process):
    env = dict(os.environ, METAPORTRAIT_BIN=_stand_in(tmp_path, fail_process), LOG_DIR=str(tmp_path / "logs"))
    start = time.monotonic()
    result = subprocess.run(["bash", os.path.join(LAUNCH, "local.sh"), "3", "train"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 3 and time.monotonic() - start < 30, result.stderr
    assert f"process {fail_process} (pid" in result.stderr
    time.sleep(0.5)
    for process in range(3):
        pid = int((tmp_path / f"pid_{process}").read_text())
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


def test_local_sh_rejects_a_bad_process_count():
    result = subprocess.run(["bash", os.path.join(LAUNCH, "local.sh"), "two", "train"], capture_output=True, text=True)
    assert result.returncode == 2 and "got 'two'" in result.stderr
