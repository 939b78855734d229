"""A DataModule for a few very long sequences: each rank holds a contiguous block of time steps.

``load(split=...)`` returns ``{"observations": [N, T, ...]}`` (one split = the same ``N``
sequences, all ``T`` steps long; e.g. :func:`enumdist.data.long_chain.synthetic_long_chain_split`,
:func:`enumdist.data.long_chain.chorales_as_one_sequence`). Every step is full batch: rank ``r``
of ``W`` gets the steps :func:`enumdist.data.long_chain.time_block` gives it, as the batch

    {"observations": [N, T_r, ...], "index": tensor([r]), "num_total": W}

-- the *blocks* are the items of the model's data plate (a model such as
:class:`enumdist.models.long_chain_hmm.LongChainHMM` turns block ``r`` of ``W`` into its share of
the exact time-sharded log-likelihood). So the pipeline's bookkeeping holds unchanged: summed
over ranks, the blocks' observations are the whole split's and ``len(index)`` is ``num_total``.
:meth:`full_batch` is the whole split as one block (``index = [0]``, ``num_total = 1``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from enumdist.data.long_chain import split_by_time
from enumdist.pipeline.data import SPLITS, ItemTable, as_item_table


class _OneBatch(Dataset):
    """A loader's only element: this rank's block (one step per epoch)."""

    def __init__(self, batch: dict):
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict:
        return self.batch


def _unbatched(item: dict) -> dict:
    return item


class TimeSplitDataModule(pl.LightningDataModule):
    """Serves each rank its time block of every split (see the module docstring).

    Args:
        load: ``load(split=...) -> {"observations": Tensor[N, T, ...]}``.
        max_items: keep the first ``max_items`` sequences (quick runs).
        max_steps: keep the first ``max_steps`` steps of every split (quick runs).
    """

    def __init__(
        self,
        load: Callable[..., Any],
        max_items: int | None = None,
        max_steps: int | None = None,
    ):
        super().__init__()
        self.load, self.max_items, self.max_steps = load, max_items, max_steps
        self.splits: dict[str, ItemTable] = {}

    def prepare_data(self) -> None:
        self.load_split("train")  # rank 0 fills caches (the chorales parse once)

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self.splits:
                self.splits[split] = self.load_split(split)

    def load_split(self, split: str) -> ItemTable:
        """One split as an :class:`~enumdist.pipeline.data.ItemTable` of its sequences."""
        function = getattr(self.load, "func", self.load)
        where = f"data.load ({getattr(function, '__qualname__', function)}) split {split!r}"
        table = as_item_table(self.load(split=split), where)
        if "observations" not in table or table["observations"].dim() < 2:
            raise ValueError(
                f"{where}: expected 'observations' [N, T, ...], got "
                f"{ {k: tuple(v.shape) for k, v in table.items()} }"
            )
        table = {k: v[: self.max_items, : self.max_steps] for k, v in table.items() if v.dim() >= 2}
        return ItemTable(table)

    def block(self, split: str, rank: int, world_size: int) -> dict[str, Any]:
        """Block ``rank`` of ``world_size`` of ``split`` as a batch."""
        self.setup()
        table = self.splits[split].table
        batch: dict[str, Any] = {k: split_by_time(v, rank, world_size) for k, v in table.items()}
        return dict(batch, index=torch.tensor([rank]), num_total=world_size)

    def full_batch(self, split: str = "train") -> dict[str, Any]:
        """The whole split as one block (one process, no time sharding)."""
        return self.block(split, 0, 1)

    def _loader(self, split: str) -> DataLoader:
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return DataLoader(
            _OneBatch(self.block(split, rank, world_size)),
            batch_size=None,
            collate_fn=_unbatched,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
