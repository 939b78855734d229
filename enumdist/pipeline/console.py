"""What a training run prints: a progress bar over the whole run, and no known third-party noise.

- :class:`StepProgressBar` counts optimiser steps toward ``trainer.max_steps`` (one bar for the
  run, "Step 120/300") instead of Lightning's per-epoch bar, which restarts at every epoch and,
  with one batch per epoch, only ever shows "1/1". Without ``max_steps`` it is Lightning's bar.
- :func:`filter_known_warnings` silences messages that carry no information for an enumdist
  user (``filter_known_warnings: true`` in ``conf/train.yaml``, the default). Each entry below
  says where the message comes from and why it is noise here.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

from pytorch_lightning.callbacks import TQDMProgressBar

# (source, pattern): messages matched at their start; a pattern names one known message only.
KNOWN_WARNINGS: tuple[tuple[str, str], ...] = (
    # lightning_fabric's SLURM detection, whenever srun is on PATH but this process is not an srun task
    ("warnings", r"The `srun` command is available on your system but is not used"),
    # Lightning's advertisement for its hosted logger, printed by every Trainer
    ("pytorch_lightning.utilities.rank_zero", r"💡 Tip: For seamless cloud logging"),
    # Lightning's own use of a torch.utils._pytree API that torch deprecated
    ("warnings", r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # wandb's image grid wants equal sizes; our pictures (curve, piano roll, matrices) differ on purpose
    ("root", r"Images sizes do not match"),
)


class _DropMatching(logging.Filter):
    def __init__(self, patterns: list[str]):
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(str(record.getMessage()).lstrip())


def filter_known_warnings(enabled: bool = True) -> None:
    """Install the filters for :data:`KNOWN_WARNINGS` (idempotent; a no-op when ``enabled`` is false).

    ``warnings`` entries become ``warnings.filterwarnings("ignore", ...)``; logger entries a
    :class:`logging.Filter` on that logger (``root`` is the root logger, which ``logging.warning``
    writes to). The anonymous-setting notice of wandb is not filtered but avoided at its cause
    (``enumdist.pipeline.loggers.WandbLogger`` does not pass the setting).
    """
    if not enabled:
        return
    by_logger: dict[str, list[str]] = {}
    for source, pattern in KNOWN_WARNINGS:
        if source == "warnings":
            warnings.filterwarnings("ignore", message=pattern)
        else:
            by_logger.setdefault(source, []).append(pattern)
    for name, patterns in by_logger.items():
        logger = logging.getLogger(None if name == "root" else name)
        if not any(isinstance(f, _DropMatching) for f in logger.filters):
            logger.addFilter(_DropMatching(patterns))


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, but the training bar runs over ``trainer.max_steps`` optimiser steps.

    It is created once, starts at ``trainer.global_step`` (a resumed run continues where its
    checkpoint ended) and shows the epoch in its description. With ``max_steps=-1`` (training
    by epochs) it behaves like :class:`TQDMProgressBar`.
    """

    def _by_steps(self, trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if self._by_steps(trainer):
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.initial = 0
            bar.n = trainer.global_step
            bar.refresh()

    def on_train_epoch_start(self, trainer, *args: Any) -> None:
        if not self._by_steps(trainer):
            return super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}, step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._by_steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, step = self.train_progress_bar, trainer.global_step
        if (
            bar is not None
            and not bar.disable
            and (step % self.refresh_rate == 0 or step >= bar.total)
        ):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._by_steps(trainer):
            return super().on_train_epoch_end(trainer, pl_module)
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
