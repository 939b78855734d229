"""``slurm/allocation.sh``: what train.sbatch derives from an allocation, checked in the environment
SLURM gives a batch script, for allocations the local clusters do not have (4 tasks per node, 3
nodes). A real 2-node job on the local machine: ``tests/slurm/test_two_nodes.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def derive(environment: dict[str, str], *overrides: str) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], **environment}
    out = subprocess.run(
        ["bash", str(ROOT / "slurm" / "allocation.sh"), *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    values = {}
    for line in out.splitlines():
        for part in line.replace("ENUMDIST_TRAINER_ARGS=", "").split():
            key, _, value = part.partition("=")
            values[key] = value
    return values


@pytest.mark.skipif(
    shutil.which("scontrol") is None, reason="scontrol not on PATH (run slurm/cluster-up.sh)"
)
def test_a_two_node_allocation_gives_devices_nodes_and_the_first_node_as_master():
    # what `sbatch --nodes=2 --ntasks-per-node=4` sets in the batch script
    values = derive(
        {
            "SLURM_JOB_ID": "1234",
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_NNODES": "2",
            "SLURM_NTASKS_PER_NODE": "4",
            "SLURM_TASKS_PER_NODE": "4(x2)",
            "SLURM_JOB_NODELIST": "gpu[07-08]",
        },
        "experiment=chorale_hmm",
        "trainer=gpu",
    )
    assert values == {
        "trainer.devices": "4",
        "trainer.num_nodes": "2",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": "11234",
    }


def test_tasks_per_node_without_ntasks_per_node_and_the_users_own_overrides_win():
    # `sbatch --ntasks=6 --nodes=3`: only SLURM_TASKS_PER_NODE is set, in its compressed form
    values = derive(
        {
            "SLURM_JOB_ID": "7",
            "SLURM_NNODES": "3",
            "SLURM_TASKS_PER_NODE": "2(x3)",
            "MASTER_ADDR": "head",
        },
        "trainer.num_nodes=3",
    )
    assert values == {"trainer.devices": "2", "MASTER_ADDR": "head", "MASTER_PORT": "10007"}
