"""Small callbacks and the atomic checkpoint writer.

- :class:`TrainHistory` writes ``<run_dir>/train_history.csv`` (``step,loss_per_obs``) on rank 0,
  atomically, and keeps its rows in checkpoints so a resumed run continues the same file.
- :class:`Throughput` logs observations per second of the global batch.
- :class:`ClassAccuracy` logs held-out accuracy of the MAP class (semi-supervised classifiers).
- :class:`AtomicCheckpointIO` writes checkpoints to a temporary file *in the target directory*
  and renames it into place. Lightning's own writer goes through ``fsspec``'s transaction,
  which writes to ``tempfile.mkstemp()`` (``/tmp``) and then ``shutil.move``s: that is a copy,
  not an atomic rename, whenever ``/tmp`` is another filesystem than the run directory.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a same-directory temporary file, then ``os.replace``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_write(path, lambda f: torch.save(checkpoint, f))


class TrainHistory(pl.Callback):
    """Rank 0 keeps ``(step, loss_per_obs)`` and rewrites the CSV every ``every_n_steps`` and at the end."""

    def __init__(self, path: str, every_n_steps: int = 10, key: str = "train/loss_per_obs"):
        self.path, self.every_n_steps, self.key = path, every_n_steps, key
        self.rows: list[list[float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        value = trainer.callback_metrics.get(self.key)
        if value is None:
            return
        self.rows.append([trainer.global_step, float(value)])
        if trainer.is_global_zero and trainer.global_step % self.every_n_steps == 0:
            self.write()

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.write()
            self.plot()

    def plot(self) -> None:
        """``train_history.png`` next to the CSV: loss per observation against step."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(5, 3.5))
        axes.plot([r[0] for r in self.rows], [r[1] for r in self.rows])
        axes.set(xlabel="step", ylabel="training loss per observation (nats)")
        figure.tight_layout()
        atomic_write(Path(self.path).with_suffix(".png"), lambda f: figure.savefig(f, format="png"))
        plt.close(figure)

    def write(self) -> None:
        def write_csv(f):
            text = "step,loss_per_obs\n" + "".join(f"{int(s)},{v!r}\n" for s, v in self.rows)
            f.write(text.encode())
        atomic_write(self.path, write_csv)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [list(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [list(r) for r in state_dict["rows"]]


class Throughput(pl.Callback):
    """Logs ``train/obs_per_s``: observations of the global batch per wall-clock second."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        elapsed = time.perf_counter() - self.start
        if elapsed > 0:
            pl_module.log("train/obs_per_s", pl_module.last_observations / elapsed, rank_zero_only=True)


class ClassAccuracy(pl.Callback):
    """Logs ``valid/accuracy`` and ``test/accuracy``: the MAP class of every held-out item
    (``enumdist.infer_discrete`` at temperature 0, through the decoding stage's ``decode_batch``)
    against ``batch[labels_key]``.

    ``state`` names the decoded state (a key of the model's ``state_sites``) holding one class
    per item. The data must hide the labels from the model (so the class is enumerated, not
    observed) and keep them under ``labels_key``; see ``load_semisupervised_split``. Correct
    counts are summed over ranks, so the logged value is the accuracy of the global batch.
    """

    def __init__(self, state: str = "class", labels_key: str = "true_labels"):
        self.state, self.labels_key = state, labels_key

    def _log(self, split: str, trainer, pl_module, batch) -> None:
        from enumdist.decoding.decoder import decode_batch

        if self.labels_key not in batch:
            raise KeyError(f"callbacks.class_accuracy: the {split} batch has no {self.labels_key!r} "
                           f"field (it has {sorted(batch)}); set labels_key to the field of true labels")
        decoded = decode_batch(pl_module.model, pl_module.guide, batch, temperature=0)[self.state]
        if decoded.shape[1] != 1:
            raise ValueError(f"callbacks.class_accuracy: state {self.state!r} holds "
                             f"{decoded.shape[1]} values per item; expected one class per item")
        labels = batch[self.labels_key]
        counts = torch.tensor([float((decoded[:, 0] == labels).sum()), float(len(labels))],
                              dtype=torch.float64, device=labels.device)
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        correct, total = counts.tolist()
        pl_module.log(f"{split}/accuracy", correct / total, rank_zero_only=True, batch_size=int(total))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._log("valid", trainer, pl_module, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._log("test", trainer, pl_module, batch)


class SaveRankParameters(pl.Callback):
    """Every rank writes its final ``state_dict`` to ``<dirpath>/rank<r>.pt`` (multi-process checks)."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_end(self, trainer, pl_module) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        path = Path(self.dirpath) / f"rank{trainer.global_rank}.pt"
        atomic_write(path, lambda f: torch.save({"step": trainer.global_step, "state_dict": state}, f))


def read_history(path: str | os.PathLike) -> list[tuple[int, float]]:
    """The rows of a ``train_history.csv``."""
    with open(path) as f:
        return [(int(r["step"]), float(r["loss_per_obs"])) for r in csv.DictReader(f)]
