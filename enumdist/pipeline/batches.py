"""One batch layout and one way to share a global batch among ranks (training, evaluation, decoding).

A batch is ``{"index": LongTensor[B], "num_total": int, <field>: Tensor[B, ...]}``: ``index`` are
the items' positions in the split and ``num_total`` the split's size, which is what a zoo model's
``pyro.plate(shard_plate, num_total, subsample=index)`` needs. With a ``lengths`` field, sequence
fields (dim >= 2) are cut to ``num_steps``: the *global* batch's longest sequence, so that every
rank runs the same time steps (a sharded ELBO or a sharded ``infer_discrete`` needs the same model
structure on every rank).

A global batch is shared by :func:`rank_shares`: ``world_size`` contiguous, disjoint, nearly equal
parts (``tensor_split``), rank ``r`` taking part ``r``; no item is repeated to even them out, so
the parts' union is the global batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def rank_shares(global_batch: torch.Tensor, world_size: int) -> tuple[torch.Tensor, ...]:
    """The ``world_size`` parts of ``global_batch`` (item positions), rank ``r`` taking part ``r``."""
    return global_batch.tensor_split(world_size)


def longest_sequence(lengths: torch.Tensor | None, items) -> int | None:
    """The padded length of a global batch of ``items``: its longest sequence (None: no lengths)."""
    return None if lengths is None else int(lengths[items].max())


def make_batch(
    fields: dict[str, torch.Tensor],
    index: torch.Tensor,
    num_total: int,
    num_steps: int | None = None,
) -> dict[str, Any]:
    """The batch of ``fields`` (each ``[B, ...]``) for items ``index`` of a split of ``num_total``.

    With a ``lengths`` field, sequence fields are cut to ``num_steps`` (default: the longest of
    these items; at least 1)."""
    batch: dict[str, Any] = dict(fields)
    if "lengths" in batch:
        longest = int(batch["lengths"].max()) if len(batch["lengths"]) else 0
        steps = max(longest if num_steps is None else num_steps, 1)
        for key, value in batch.items():
            if key != "lengths" and value.dim() >= 2:
                batch[key] = value[:, :steps]
    batch["index"] = index
    batch["num_total"] = num_total
    return batch


def plan_decode_steps(num_items: int, batch_size: int, world_size: int) -> list[list[range]]:
    """Global steps covering items ``0 .. num_items`` in order, each shared by :func:`rank_shares`
    into ``world_size`` contiguous, non-empty ranges of about ``batch_size`` items (no item is
    dropped: the steps are as even as possible)."""
    if num_items < world_size:
        raise ValueError(f"the split has {num_items} item(s), fewer than the {world_size} ranks")
    num_steps = math.ceil(num_items / (batch_size * world_size))
    steps = []
    for step_items in torch.arange(num_items).tensor_split(num_steps):
        shares = rank_shares(step_items, world_size)
        steps.append([range(int(s[0]), int(s[-1]) + 1) for s in shares])
    return steps
