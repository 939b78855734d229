"""Where the decoding stage reads a split's items from: a table in memory, or shards on disk.

Both sources answer the same questions -- how many items, their lengths (to pad a global step to
its longest item), the batch of an item range, the items' own names -- so the stage decodes a
2,080-chorale split held in memory and a 10^6-item synthetic split streamed from Parquet shards
with the same code. :func:`decode_items` picks the source from the data module: one with
``streamed_split`` (:class:`~enumdist.pipeline.streaming.StreamingDataModule`) is streamed, any
other is loaded with ``load_split``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from enumdist.pipeline.batches import make_batch


class DecodeItems(Protocol):
    num_items: int  # items to decode: the split's first ``num_items``
    num_total: int  # the split's size (the data plate's ``num_total``)
    lengths: torch.Tensor | None  # [num_items], or None for data without sequences

    def batch(self, items: range, num_steps: int | None = None) -> dict[str, Any]: ...

    def names(self, items: range) -> list[str] | None: ...

    def validate(self, model, where: str) -> None: ...


def _limited(num_items: int, max_items: int | None, where: str) -> int:
    if max_items is not None and max_items < 1:
        raise ValueError(f"decode max_items must be >= 1 or null, got {max_items} ({where})")
    return num_items if max_items is None else min(num_items, max_items)


class InMemoryItems:
    """A split loaded whole (``datamodule.load_split``): chorales, documents, saved tensors."""

    def __init__(self, loaded, max_items: int | None = None):
        self.table, self._names = loaded.table, getattr(loaded, "names", None)
        self.num_total = next(iter(self.table.values())).shape[0]
        self.num_items = _limited(self.num_total, max_items, "in-memory split")
        self.lengths = self.table.get("lengths")

    def batch(self, items: range, num_steps: int | None = None) -> dict[str, Any]:
        fields = {k: t[items.start : items.stop] for k, t in self.table.items()}
        return make_batch(fields, torch.arange(items.start, items.stop), self.num_total, num_steps)

    def names(self, items: range) -> list[str] | None:
        return None if self._names is None else self._names[items.start : items.stop]

    def validate(self, model, where: str) -> None:
        """Every item, before anything is decoded (a rank that raised mid-step would leave the
        others waiting in a collective)."""
        model.validate_items(self.batch(range(self.num_items)), where)


class StreamedItems:
    """A split read from its Parquet shards a batch at a time
    (:class:`~enumdist.pipeline.streaming.ShardedSplit`): memory does not grow with N."""

    def __init__(self, split, max_items: int | None = None):
        self.split = split
        self.num_total = len(split)
        self.num_items = _limited(self.num_total, max_items, f"{split.root / split.split}")
        self.lengths = torch.from_numpy(split.lengths[: self.num_items].astype(np.int64))

    def batch(self, items: range, num_steps: int | None = None) -> dict[str, Any]:
        index = np.arange(items.start, items.stop)
        steps = num_steps or int(self.split.lengths[index].max())
        return self.split.dense_batch(index, steps)

    def names(self, items: range) -> list[str] | None:
        return None  # an item's identity is its position in the split (``index``)

    def validate(self, model, where: str) -> None:
        """The shards were written by :mod:`enumdist.data.synthetic`, which checks every value;
        what can still disagree is the data's shape against the model's (keys): checked on the
        first items, by every rank before any step."""
        model.validate_items(self.batch(range(min(self.num_items, 8))), where)


def decode_items(datamodule, split: str, max_items: int | None = None) -> DecodeItems:
    """The source of ``split``'s items for decoding (module docstring); raises on an empty split
    and on NaN fields (in-memory data are checked when loaded)."""
    if hasattr(datamodule, "streamed_split"):
        return StreamedItems(datamodule.streamed_split(split), max_items)
    return InMemoryItems(datamodule.load_split(split), max_items)
