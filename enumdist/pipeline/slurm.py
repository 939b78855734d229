"""SLURM: requeue at a step boundary, the right weights after a requeue, what a sweep reports.

- :class:`SlurmRequeue` (a callback) takes over SIGUSR1 and SIGUSR2 in every SLURM job, sbatch
  (``--signal=SIGUSR1@90``) and the submitit launcher (whose timeout signal is USR2) alike. The
  handler only sets a flag; after each optimiser step the ranks agree on it (one all-reduce), all
  save ``<root>/requeue/requeue-<step>.ckpt`` and training stops. ``train.py`` then closes the
  loggers (wandb flushes the segment) and calls :meth:`SlurmRequeue.requeue`: ``scontrol
  requeue`` under sbatch; under submitit, submitit's own handler, which pickles the resubmission,
  requeues and exits. The restarted job resumes with ``ckpt_path=last``.
  Lightning's own SIGUSR1 handler would save a checkpoint *inside* the signal handler and enter a
  barrier while another rank sits in a collective: with DDP it deadlocks. :func:`slurm_plugins`
  turns it off wherever Lightning detects SLURM.
  The name is never Lightning's ``hpc_ckpt_<n>``: under SLURM, Lightning's ``ckpt_path=None``
  restores the highest-numbered ``hpc_ckpt_*`` of the root dir (and took the sidecar
  ``hpc_ckpt_1.ckpt.sha256`` for number 1256).
- :func:`trained_checkpoint`: the checkpoint that holds the weights ``fit`` ended with. Under
  SLURM, ``trainer.test(ckpt_path=None)`` restores the newest ``hpc_ckpt_*.ckpt`` (Lightning's
  checkpoint connector), i.e. stale weights where one exists (a run of an older version, or
  Lightning's own auto-requeue), not the trained ones.
- :class:`PrintJobResults` (a Hydra callback, ``launcher=slurm``): after a sweep, one line per job
  with its metrics and run directory, read from ``<run_dir>/metrics.json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from enumdist.atomic import atomic_write
from enumdist.pipeline.checkpoint_files import requeue_checkpoint
from enumdist.rank_zero import get_logger

log = get_logger(__name__)

METRICS_FILE = "metrics.json"  # <run_dir>/metrics.json, written by train.py on rank 0


def in_slurm_job(environ=None) -> bool:
    """A SLURM batch job's task (sbatch or submitit), not an interactive ``salloc`` shell."""
    environ = os.environ if environ is None else environ
    return "SLURM_JOB_ID" in environ and environ.get("SLURM_JOB_NAME") not in (
        "bash",
        "interactive",
    )


def under_submitit(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get("SUBMITIT_EXECUTOR") == "slurm"


def slurm_plugins() -> list:
    """``[SLURMEnvironment(auto_requeue=False)]`` where Lightning would detect SLURM, else ``[]``."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


class SlurmRequeue(pl.Callback):
    """Checkpoint and requeue at a step boundary on any of ``signals`` (see the module docstring).

    Inactive outside SLURM batch jobs. After ``fit``, ``requested`` tells whether training stopped
    for a requeue (then the job must not test or decode the unfinished model).
    """

    def __init__(self, signals: tuple[str, ...] | list[str] = ("SIGUSR1", "SIGUSR2")):
        self.signals = [
            signal.Signals[s] if isinstance(s, str) else signal.Signals(s) for s in signals
        ]
        self.received: int | None = None
        self.requested = False
        self.checkpoint: str | None = None
        self.previous: dict[int, Any] = {}

    @staticmethod
    def active() -> bool:
        return in_slurm_job()

    def setup(self, trainer, pl_module, stage) -> None:
        if self.active() and not self.previous:
            for signum in self.signals:
                self.previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.received = self.received or signum  # only a flag: the step in flight finishes first

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.active() or self.requested:
            return
        flag = torch.tensor(float(self.received is not None), device=pl_module.device)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag, reduce_op="sum")
        if flag.item() == 0:
            return
        self.checkpoint = str(requeue_checkpoint(trainer.default_root_dir, trainer.global_step))
        trainer.save_checkpoint(self.checkpoint)
        self.requested, trainer.should_stop = True, True
        if trainer.is_global_zero:
            name = (
                signal.Signals(self.received).name if self.received else "a signal on another rank"
            )
            log.info(
                f"SlurmRequeue: {name}: saved {self.checkpoint} at step {trainer.global_step}",
            )

    def requeue(self, trainer) -> None:
        """Rank 0 requeues the job (after the loggers are closed); other ranks return."""
        if not self.requested or not trainer.is_global_zero:
            return
        submitit_handler = self.previous.get(signal.SIGUSR2)
        if under_submitit() and callable(submitit_handler):
            log.info(
                "SlurmRequeue: handing over to submitit (resubmission, scontrol requeue, exit)",
            )
            submitit_handler(signal.SIGUSR2, None)  # requeues, then raises SystemExit
            return
        job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        job = f"{job}_{task}" if task else job
        result = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
        )
        log.info(
            f"SlurmRequeue: scontrol requeue {job}: "
            f"{'ok' if result.returncode == 0 else result.stderr.strip()}",
        )


def trained_checkpoint(trainer: pl.Trainer, run_dir: str | os.PathLike) -> str:
    """A checkpoint of the weights ``fit`` ended with, to pass to ``trainer.test(ckpt_path=...)``.

    ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` when training ends; without one,
    ``<run_dir>/checkpoints/trained.ckpt`` is written here.
    """
    callback = trainer.checkpoint_callback
    last = getattr(callback, "last_model_path", "") if callback is not None else ""
    if (
        last
        and Path(last).is_file()
        and torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        == trainer.global_step
    ):
        return last
    path = str(Path(run_dir) / "checkpoints" / "trained.ckpt")
    trainer.save_checkpoint(path)
    return path


def write_metrics(metrics: dict[str, float], run_dir: str | os.PathLike) -> Path:
    path = Path(run_dir) / METRICS_FILE
    atomic_write(path, lambda f: f.write(json.dumps(metrics, indent=1, sort_keys=True).encode()))
    return path


class PrintJobResults(HydraCallback):
    """After a sweep (run by any launcher, here the submitit one): each job's metrics and run directory."""

    def __init__(
        self,
        keys: tuple[str, ...] | list[str] = (
            "test/loss_per_obs",
            "valid/loss_per_obs",
            "train/loss_per_obs",
        ),
    ):
        self.keys = list(keys)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = (
            sorted(
                (p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()),
                key=lambda p: int(p.name),
            )
            if sweep.is_dir()
            else []
        )
        log.info(f"sweep directory: {sweep.resolve()}  ({len(jobs)} job(s))")
        for job in jobs:
            path = job / METRICS_FILE
            if not path.is_file():
                log.info(
                    f"  job {job.name}: no {METRICS_FILE} (requeued, failed or not finished); "
                    f"run directory {job.resolve()}",
                )
                continue
            metrics = json.loads(path.read_text())
            shown = ", ".join(f"{k} {metrics[k]:.5f}" for k in self.keys if k in metrics)
            log.info(
                f"  job {job.name}: {shown or 'no metrics'}; run directory {job.resolve()}",
            )
