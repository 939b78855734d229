"""A callback for tests: each rank saves its first step's loss and (DDP-averaged) gradients."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch


class RecordFirstStep(pl.Callback):
    """Writes ``<path>/rank<r>.pt``: ``{"loss": float, "grads": {name: Tensor}}`` of step 0,
    the gradients as the optimiser gets them (after DDP's all-reduce, before clipping)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.record: dict = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0:
            self.record["grads"] = {
                name: p.grad.detach().clone() for name, p in pl_module.named_parameters()
            }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 1 and "loss" not in self.record:
            self.record["loss"] = float(outputs["loss"])
            self.path.mkdir(parents=True, exist_ok=True)
            torch.save(self.record, self.path / f"rank{trainer.global_rank}.pt")
