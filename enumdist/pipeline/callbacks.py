"""Small callbacks and the atomic checkpoint writer.

- :class:`TrainHistory` writes ``<run_dir>/train_history.csv`` (``step,loss_per_obs,
  valid_loss_per_obs``) and the run's loss picture on rank 0, atomically, and keeps its rows in
  checkpoints so a resumed run continues the same file.
- :class:`Throughput` logs observations per second of the global batch.
- :class:`ClassAccuracy` logs held-out accuracy of the MAP class (semi-supervised classifiers).
- :class:`AtomicCheckpointIO` (in :mod:`enumdist.pipeline.checkpoint_files`, re-exported here)
  writes checkpoints atomically with a checksum sidecar and reads them back verified.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from enumdist.atomic import atomic_write
from enumdist.pipeline.checkpoint_files import AtomicCheckpointIO  # noqa: F401 - re-exported


class TrainHistory(pl.Callback):
    """Rank 0 keeps ``(step, loss_per_obs, valid_loss_per_obs)`` and rewrites the CSV every
    ``every_n_steps`` and at the end, where it also draws the run's one loss picture
    (``train_history.png``: training and validation loss against step).

    A validation run at step ``s`` fills ``valid_loss_per_obs`` of the row of step ``s`` (the
    training step it followed); the column is empty on steps without one.
    """

    COLUMNS = ("step", "loss_per_obs", "valid_loss_per_obs")

    def __init__(
        self,
        path: str,
        every_n_steps: int = 10,
        key: str = "train/loss_per_obs",
        valid_key: str = "valid/loss_per_obs",
    ):
        self.path, self.every_n_steps, self.key, self.valid_key = (
            path,
            every_n_steps,
            key,
            valid_key,
        )
        self.rows: list[list[float | None]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        value = trainer.callback_metrics.get(self.key)
        if value is None:
            return
        self.rows.append([trainer.global_step, float(value), None])
        if trainer.is_global_zero and trainer.global_step % self.every_n_steps == 0:
            self.write()

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.valid_key)
        if trainer.sanity_checking or value is None:
            return
        if self.rows and self.rows[-1][0] == trainer.global_step:
            self.rows[-1][2] = float(value)
        else:  # a validation before any training step of this run
            self.rows.append([trainer.global_step, None, float(value)])

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.write()
            self.plot()

    def plot(self) -> None:
        """``train_history.png`` next to the CSV (see :func:`loss_figure`)."""
        import matplotlib.pyplot as plt

        figure = loss_figure(self.rows)
        atomic_write(Path(self.path).with_suffix(".png"), lambda f: figure.savefig(f, format="png"))
        plt.close(figure)

    def write(self) -> None:
        def cell(value):
            return "" if value is None else repr(value)

        def write_csv(f):
            text = (
                ",".join(self.COLUMNS)
                + "\n"
                + "".join(f"{int(s)},{cell(v)},{cell(w)}\n" for s, v, w in self.rows)
            )
            f.write(text.encode())

        atomic_write(self.path, write_csv)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [list(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # rows of checkpoints written before the validation column have two entries
        self.rows = [([*list(r), None])[:3] for r in state_dict["rows"]]


def loss_figure(rows):
    """Training and validation loss per observation against step, from ``(step, train, valid)``
    rows (``None`` where a row has no such value); the validation points are marked, as there
    are few of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    train = [(s, v) for s, v, _ in rows if v is not None]
    valid = [(s, w) for s, _, w in rows if w is not None]
    if train:
        axes.plot(*zip(*train), label="training (this step's batch)")
    if valid:
        axes.plot(*zip(*valid), marker="o", label="validation (whole split)")
    axes.set(xlabel="step", ylabel="loss per observation (nats)", title="loss")
    axes.legend()
    figure.tight_layout()
    return figure


class Throughput(pl.Callback):
    """Logs ``train/obs_per_s``: observations of the global batch per wall-clock second."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        elapsed = time.perf_counter() - self.start
        if elapsed > 0:
            pl_module.log(
                "train/obs_per_s", pl_module.last_observations / elapsed, rank_zero_only=True
            )


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
            raise KeyError(
                f"callbacks.class_accuracy: the {split} batch has no {self.labels_key!r} "
                f"field (it has {sorted(batch)}); set labels_key to the field of true labels"
            )
        decoded = decode_batch(pl_module.model, pl_module.guide, batch, temperature=0)[self.state]
        if decoded.shape[1] != 1:
            raise ValueError(
                f"callbacks.class_accuracy: state {self.state!r} holds "
                f"{decoded.shape[1]} values per item; expected one class per item"
            )
        labels = batch[self.labels_key]
        counts = torch.tensor(
            [float((decoded[:, 0] == labels).sum()), float(len(labels))],
            dtype=torch.float64,
            device=labels.device,
        )
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        correct, total = counts.tolist()
        pl_module.log(
            f"{split}/accuracy", correct / total, rank_zero_only=True, batch_size=int(total)
        )

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._log("valid", trainer, pl_module, batch)

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._log("test", trainer, pl_module, batch)


class SaveRankParameters(pl.Callback):
    """Every rank writes its final ``state_dict`` to ``<dirpath>/rank<r>.pt`` (multi-process
    checks), with the step and where it ran: ``world_size``, ``node_rank``, ``local_rank``."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_end(self, trainer, pl_module) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        path = Path(self.dirpath) / f"rank{trainer.global_rank}.pt"
        atomic_write(
            path,
            lambda f: torch.save(
                {
                    "step": trainer.global_step,
                    "world_size": trainer.world_size,
                    "node_rank": trainer.node_rank,
                    "local_rank": trainer.local_rank,
                    "state_dict": state,
                },
                f,
            ),
        )
