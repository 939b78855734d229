"""After a requeue, ``trainer.test`` must evaluate the trained weights (no cluster needed).

Under SLURM, Lightning's ``test(ckpt_path=None)`` restores the newest ``hpc_ckpt_*.ckpt`` of the
root directory, i.e. the weights at the last requeue. Here a SLURM task's environment and a stale
``hpc_ckpt_1.ckpt`` (after 2 steps) meet a run of 6 steps: its test loss must be that of a plain
6-step run. (The copy has no checksum sidecar: Lightning reads ``hpc_ckpt_1.ckpt.sha256`` as
version 1256 of ``hpc_ckpt_``; see slurm/README.md.)
"""

from __future__ import annotations

import shutil

import pytest

from tests.pipeline.conftest import compose_config

SLURM_TASK = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "enumdist-train",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_JOB_NUM_NODES": "1",
}


def train(run_dir, steps: int) -> dict[str, float]:
    from enumdist.train import train as run

    return run(
        compose_config(
            "experiment=toy_hmm",
            "logger=none",
            "callbacks.progress_bar.refresh_rate=0",
            f"trainer.max_steps={steps}",
            "trainer.check_val_every_n_epoch=100",
            run_dir=run_dir,
        )
    )


def test_a_stale_hpc_checkpoint_does_not_replace_the_trained_weights_in_test(tmp_path, monkeypatch):
    stale = train(tmp_path / "stale", steps=2)["test/loss_per_obs"]
    expected = train(tmp_path / "plain", steps=6)["test/loss_per_obs"]
    assert stale != pytest.approx(
        expected, rel=1e-6
    )  # the two weights are told apart by the test loss

    run_dir = tmp_path / "requeued"
    run_dir.mkdir()
    shutil.copy(tmp_path / "stale" / "checkpoints" / "last.ckpt", run_dir / "hpc_ckpt_1.ckpt")
    for key, value in SLURM_TASK.items():
        monkeypatch.setenv(key, value)
    metrics = train(run_dir, steps=6)
    assert metrics["test/loss_per_obs"] == pytest.approx(expected, rel=1e-9)
