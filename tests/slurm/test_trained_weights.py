"""After a requeue, ``trainer.test`` must evaluate the trained weights, and Lightning must never
take our requeue checkpoint for one of its own (no cluster needed).

Under SLURM, Lightning's ``test(ckpt_path=None)`` restores the newest ``hpc_ckpt_*.ckpt`` of the
root directory, i.e. the weights at the last requeue. Here a SLURM task's environment and a stale
``hpc_ckpt_1.ckpt`` (after 2 steps) meet a run of 6 steps: its test loss must be that of a plain
6-step run. (The copy has no checksum sidecar: Lightning reads ``hpc_ckpt_1.ckpt.sha256`` as
version 1256 of ``hpc_ckpt_``; see slurm/README.md.)
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from lightning_fabric.plugins.environments import SLURMEnvironment

from enumdist.pipeline.checkpoint_files import AtomicCheckpointIO, resolve_ckpt_path, sidecar_of
from enumdist.pipeline.module import EnumModule
from enumdist.pipeline.slurm import SlurmRequeue, slurm_plugins
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


class SignalAtStep(pl.Callback):
    """Sends its own process ``signum`` after optimiser step ``step``, as ``--signal`` would."""

    def __init__(self, step: int, signum: signal.Signals = signal.SIGUSR1):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def toy_job(run_dir, *callbacks) -> tuple[pl.Trainer, EnumModule, pl.LightningDataModule]:
    """A one-task job as ``enumdist.train`` builds it under SLURM: our checkpoint I/O, Lightning's
    SLURM environment (its auto-requeue off), the run dir as the trainer's root dir."""
    cfg = compose_config("experiment=toy_hmm", "logger=none", run_dir=run_dir)
    module = EnumModule(
        instantiate(cfg.model),
        elbo=instantiate(cfg.elbo),
        guide=instantiate(cfg.guide),
        optimizer=instantiate(cfg.optim.optimizer, _convert_="all"),
    )
    trainer = pl.Trainer(
        default_root_dir=run_dir,
        max_steps=6,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        plugins=[AtomicCheckpointIO(), *slurm_plugins()],
    )
    return trainer, module, instantiate(cfg.data)


def test_lightning_never_resumes_from_our_requeue_checkpoint_and_our_resume_does(
    tmp_path, monkeypatch
):
    for key, value in SLURM_TASK.items():
        monkeypatch.setenv(key, value)
    assert SLURMEnvironment.detect()
    run_dir = tmp_path / "run"
    requeue = SlurmRequeue()
    handlers = {s: signal.getsignal(s) for s in requeue.signals}
    try:
        trainer, module, data = toy_job(run_dir, SignalAtStep(2), requeue)
        trainer.fit(module, datamodule=data)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert requeue.requested and trainer.global_step == 2
    saved = Path(requeue.checkpoint)
    assert saved.is_file() and sidecar_of(saved).is_file(), sorted(run_dir.rglob("*"))
    assert resolve_ckpt_path("last", run_dir) == str(saved)  # the restart resumes from it

    # ckpt_path=None under SLURM (a fresh run in this run dir, a user's own test() call):
    # Lightning's HPC resume scan must find nothing of ours; before, it read the checksum
    # sidecar hpc_ckpt_1.ckpt.sha256 as checkpoint 1256 and failed to load that
    trainer, module, data = toy_job(run_dir)
    initial = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer.test(module, datamodule=data, ckpt_path=None, verbose=False)
    trained = torch.load(saved, weights_only=True)["state_dict"]
    for name, value in module.model.state_dict().items():
        assert torch.equal(value, initial[name])  # not restored from the requeue checkpoint
        assert not torch.equal(value, trained[f"model.{name}"])
