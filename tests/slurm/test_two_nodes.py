"""A 2-node ``sbatch slurm/train.sbatch`` job on a real, local SLURM cluster of two nodes.

Debian's slurm-wlm 22.05 runs several slurmd on one host (``slurmd -N <node>``, each node with
its own ``Port``): the fixture starts a private cluster next to the shared one of
slurm/cluster-up.sh (its own slurmctld port, state, spool and log dirs under /tmp, munge shared),
with two nodes: this host's own name (so the first node, the rendezvous ``MASTER_ADDR``,
resolves) and a second name on the same address. The job runs one task per node, gloo over the
loopback, and must finish with both ranks trained in one world of two: node ranks 0 and 1,
derived by slurm/allocation.sh (``trainer.num_nodes=2``, ``trainer.devices=1``, ``MASTER_ADDR``)
and Lightning's SLURM environment (``SLURM_NODEID``, ``SLURM_PROCID``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("slurmd") is None or shutil.which("sbatch") is None,
        reason="slurm-wlm not installed (run slurm/cluster-up.sh)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
HOST = socket.gethostname().split(".")[0]  # `hostname -s`; slurm/cluster-up.sh makes it resolve
STEPS = 4
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")

CONFIG = """\
ClusterName=enumdist-two-nodes
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
{nodes}
PartitionName=two Nodes={node_names} Default=YES MaxTime=INFINITE State=UP
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def slurm(env: dict, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


def wait_until(predicate, timeout: float, what: str, logs: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    text = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{text}")


@pytest.fixture(scope="module")
def two_node_cluster():
    """``{**os.environ, SLURM_CONF}`` of a private 2-node cluster on this host (torn down after)."""
    # short paths: slurmstepd puts unix sockets in the spool dirs (108 characters at most)
    root = Path(tempfile.mkdtemp(prefix="enumdist-2n-", dir="/tmp"))
    ctld_port, *node_ports = free_ports(3)
    names = [HOST, f"{HOST}-second"]
    nodes = "\n".join(
        f"NodeName={name} NodeHostname={HOST} NodeAddr=127.0.0.1 Port={port} CPUs=1 State=UNKNOWN"
        for name, port in zip(names, node_ports)
    )
    for folder in ("state", "run", "log", *(f"spool/{n}" for n in names)):
        (root / folder).mkdir(parents=True)
    conf = root / "slurm.conf"
    conf.write_text(
        CONFIG.format(
            host=HOST, ctld_port=ctld_port, root=root, nodes=nodes, node_names=",".join(names)
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        for command in (["slurmctld"], *(["slurmd", "-N", n] for n in names)):
            started = slurm(env, command[0], "-f", str(conf), *command[1:])
            assert started.returncode == 0, (command, started.stdout, started.stderr)

        def idle() -> bool:
            out = slurm(env, "sinfo", "-N", "-h", "-o", "%N %t").stdout.split("\n")
            return sorted(line.split()[1] for line in out if line.strip()) == ["idle", "idle"]

        wait_until(idle, 60, "both nodes of the 2-node cluster to be idle", root / "log")
        yield env
    finally:
        for pid_file in (root / "run").glob("*.pid"):  # only the daemons started here
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
        time.sleep(2)
        shutil.rmtree(root, ignore_errors=True)


def test_a_two_node_sbatch_job_trains_one_rank_on_each_node(two_node_cluster, tmp_path):
    env = {**two_node_cluster, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(ROOT)
    run_dir = tmp_path / "run"
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=2",
            "--ntasks-per-node=1",
            "--time=00:05:00",
            f"--output={tmp_path}/slurm-%j.out",
            "slurm/train.sbatch",
            str(run_dir),
            f"hydra.searchpath=[file://{ROOT / 'tests' / 'pipeline' / 'conf'}]",
            "experiment=toy_hmm",
            "logger=none",
            "callbacks=with_rank_params",
            "callbacks.progress_bar.refresh_rate=0",
            f"trainer.max_steps={STEPS}",
            "trainer.check_val_every_n_epoch=100",
            "test=false",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]

    def finished() -> str | None:
        out = slurm(env, "scontrol", "-o", "show", "job", job_id).stdout
        state = re.search(r"JobState=(\S+)", out)
        return state.group(1) if state and state.group(1) in FINISHED else None

    try:
        state = wait_until(finished, 300, f"job {job_id}", tmp_path)
    finally:
        slurm(env, "scancel", job_id)  # a no-op once it finished
    log = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert state == "COMPLETED", f"job {job_id}: {state}\n{log[-5000:]}"
    assert (
        f"2 task(s) on 2 node(s), trainer.devices=1 trainer.num_nodes=2, MASTER_ADDR={HOST}" in log
    ), log[-3000:]
    ranks = [
        torch.load(run_dir / "final_params" / f"rank{r}.pt", weights_only=True) for r in (0, 1)
    ]
    where = [(r["world_size"], r["node_rank"], r["local_rank"], r["step"]) for r in ranks]
    assert where == [(2, 0, 0, STEPS), (2, 1, 0, STEPS)]
    for name, value in ranks[0]["state_dict"].items():  # one model, trained by both ranks
        torch.testing.assert_close(value, ranks[1]["state_dict"][name], rtol=0, atol=0)
