"""DataModules that give every rank its own shard of the data plate.

A split is loaded once as a table of per-item tensors (every tensor's first dim is the item).
Batches have the layout of :mod:`enumdist.pipeline.batches` (``index``, ``num_total``, fields cut
to the *global* batch's longest sequence); variable-length data (a ``lengths`` field) is stored
zero-padded.

Sharding: each step draws one *global* batch (the whole split, or a minibatch of
``batch_size * world_size`` items from a seeded permutation) and splits it into ``world_size``
disjoint, nearly equal shards (:func:`~enumdist.pipeline.batches.rank_shares`); rank ``r`` gets
shard ``r``. Unlike ``DistributedSampler`` no item
is ever repeated to even the shards out, so the union of the shards is the global batch and a
sharded exact ELBO equals the single-process one. Every rank sees the same number of steps.

Resuming: the training loader is a :class:`ResumableLoader`, which Lightning treats as a stateful
data loader (``state_dict``/``load_state_dict``): a checkpoint records the epoch and how many of its
batches training has consumed, and a resumed run skips exactly those, so it sees the batches the
uninterrupted run would have seen (a plain loader restarts the epoch from its first batch).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from enumdist.pipeline.batches import longest_sequence, make_batch, rank_shares

SPLITS = ("train", "valid", "test")


def as_item_table(loaded: Any, where: str) -> dict[str, torch.Tensor]:
    """Turn what a loader returned (dataclass or mapping) into ``{field: Tensor[N, ...]}``.

    Only tensors whose first dim is the number of items are kept (metadata is dropped).
    Raises ``ValueError`` naming ``where`` if nothing usable is found or sizes disagree.
    """
    if is_dataclass(loaded):
        items = {f.name: getattr(loaded, f.name) for f in fields(loaded)}
    elif isinstance(loaded, Mapping):
        items = dict(loaded)
    else:
        raise ValueError(
            f"{where}: expected a dataclass or a dict of tensors, got {type(loaded).__name__}"
        )
    tensors = {k: v for k, v in items.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
    if not tensors:
        raise ValueError(f"{where}: no tensor fields in {sorted(items)}")
    # the number of items: len() of a data set object, else the first tensor field's first dim
    num_items = (
        len(loaded)
        if hasattr(loaded, "__len__") and not isinstance(loaded, Mapping)
        else next(iter(tensors.values())).shape[0]
    )
    if num_items == 0:
        raise ValueError(f"{where}: the split is empty")
    table = {k: t for k, t in tensors.items() if t.shape[0] == num_items}
    for key, t in table.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{where}: field {key!r} holds NaN or infinite values")
    if "lengths" in table:
        lengths = table["lengths"]
        seq_fields = [k for k, t in table.items() if k != "lengths" and t.dim() >= 2]
        for key in seq_fields:
            if int(lengths.max()) > table[key].shape[1] or int(lengths.min()) < 0:
                raise ValueError(
                    f"{where}: 'lengths' range [{int(lengths.min())}, {int(lengths.max())}] does not "
                    f"fit field {key!r} of shape {tuple(table[key].shape)}"
                )
    return table


def item_names(loaded: Any, num_items: int, where: str) -> list[str] | None:
    """The items' own names, when the loader gives them as a ``names`` field with one entry per
    item (a chorale's file name, a document's key), for decoded output; else ``None``."""
    names = loaded.get("names") if isinstance(loaded, Mapping) else getattr(loaded, "names", None)
    if names is None or isinstance(names, torch.Tensor):
        return None
    names = [str(n) for n in names]
    if len(names) != num_items:
        raise ValueError(f"{where}: 'names' holds {len(names)} entries for {num_items} items")
    return names


class ItemTable(Dataset):
    """Items of one split; ``dataset[i]`` or ``dataset[(i, steps)]`` is ``(i, {field: Tensor[...]}, steps)``.
    ``names`` are the items' own names, or ``None`` when the data names none."""

    def __init__(self, table: dict[str, torch.Tensor], names: list[str] | None = None):
        self.table = table
        self.num_items = next(iter(table.values())).shape[0]
        self.names = names

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(
        self, key: int | tuple[int, int]
    ) -> tuple[int, dict[str, torch.Tensor], int | None]:
        i, steps = key if isinstance(key, tuple) else (key, None)
        return i, {k: t[i] for k, t in self.table.items()}, steps


def collate_items(
    items: list[tuple[int, dict[str, torch.Tensor], int | None]], num_total: int
) -> dict[str, Any]:
    """Stack items into a batch (:func:`~enumdist.pipeline.batches.make_batch`): sequence fields
    are cut to ``steps`` (given by the sampler: the global batch's longest sequence) or, without
    it, to the longest sequence in ``items``."""
    index = torch.tensor([i for i, _, _ in items], dtype=torch.long)
    stacked = {k: torch.stack([item[k] for _, item, _ in items]) for k in items[0][1]}
    return make_batch(stacked, index, num_total, items[0][2])


class ShardSampler(Sampler[list[int]]):
    """Yields, per step, this rank's shard of a global batch (see module docstring).

    ``batch_size=None`` means full batch (one step per epoch). With minibatches the global batch
    holds ``batch_size * world_size`` items of a permutation seeded by ``seed + epoch``; a last
    global batch with fewer items than ranks is dropped so that no rank gets an empty shard.
    """

    def __init__(
        self,
        num_items: int,
        rank: int,
        world_size: int,
        batch_size: int | None,
        shuffle: bool,
        seed: int,
        lengths: torch.Tensor | None = None,
    ):
        if num_items < world_size:
            raise ValueError(f"{num_items} items cannot be sharded over {world_size} ranks")
        self.num_items, self.rank, self.world_size = num_items, rank, world_size
        self.lengths = lengths
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches to skip) of a restored run

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> ShardSampler:
        # Lightning calls set_epoch (also with the restored epoch on resume) on
        # ``dataloader.batch_sampler.sampler``, not on the batch sampler itself
        return self

    def _global_batches(self) -> list[torch.Tensor]:
        if self.shuffle and self.batch_size is not None:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_items, generator=generator)
        else:
            order = torch.arange(self.num_items)
        size = self.num_items if self.batch_size is None else self.batch_size * self.world_size
        return [b for b in order.split(size) if len(b) >= self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._global_batches()
        if self.resume_at is not None:  # once: the first epoch after a restore
            epoch, skip = self.resume_at
            self.resume_at = None
            if epoch == self.epoch and skip < len(batches):
                batches = batches[skip:]
        for global_batch in batches:
            shard = rank_shares(global_batch, self.world_size)[self.rank].tolist()
            if self.lengths is None:
                yield shard
            else:  # every rank pads to the same number of steps
                steps = longest_sequence(self.lengths, global_batch)
                yield [(i, steps) for i in shard]

    def __len__(self) -> int:
        return len(self._global_batches())


class ShardedDataModule(pl.LightningDataModule):
    """Loads ``train``/``valid``/``test`` with ``load(split)`` and serves per-rank shards.

    Args:
        load: ``load(split=...) -> dataclass | dict`` of per-item tensors (e.g. a partial of
            ``enumdist.data.load_chorales``).
        batch_size: items per rank per step; ``None`` = full batch.
        max_items: keep only the first ``max_items`` items of every split (quick runs).
        eval_batch_size: items per rank for valid/test; ``None`` = full split.
        seed: base seed of the minibatch permutation (epoch ``e`` uses ``seed + e``).
    """

    def __init__(
        self,
        load: Callable[[str], Any],
        batch_size: int | None = None,
        max_items: int | None = None,
        eval_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.load, self.batch_size, self.max_items = load, batch_size, max_items
        self.eval_batch_size, self.shuffle, self.seed = eval_batch_size, shuffle, seed
        self.num_workers = num_workers
        self.splits: dict[str, ItemTable] = {}

    def prepare_data(self) -> None:
        # rank 0 only: fill caches (e.g. parse the chorales once) before other ranks load
        self.load_split("train")

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self.splits:
                self.splits[split] = self.load_split(split)

    def load_split(self, split: str) -> ItemTable:
        """One split as an :class:`ItemTable` (validated; ``max_items`` applied)."""
        function = getattr(self.load, "func", self.load)  # unwrap functools.partial
        where = f"data.load ({getattr(function, '__qualname__', function)}) split {split!r}"
        try:
            loaded = self.load(split=split)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"{where}: data not found: {error}. Check the data config's paths."
            ) from error
        table = as_item_table(loaded, where)
        names = item_names(loaded, next(iter(table.values())).shape[0], where)
        if self.max_items is not None:
            table = {k: t[: self.max_items] for k, t in table.items()}
            names = names[: self.max_items] if names is not None else None
        return ItemTable(table, names)

    def full_batch(self, split: str = "train") -> dict[str, Any]:
        """The whole split as one batch (no sharding): for oracles and one-off passes."""
        self.setup()
        dataset = self.splits[split]
        return collate_items([dataset[i] for i in range(len(dataset))], len(dataset))

    def _loader(self, split: str, batch_size: int | None, shuffle: bool) -> DataLoader:
        dataset = self.splits[split]
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = ShardSampler(
            len(dataset),
            rank,
            world_size,
            batch_size,
            shuffle,
            self.seed,
            lengths=dataset.table.get("lengths"),
        )
        kwargs = {
            "batch_sampler": sampler,
            "num_workers": self.num_workers,
            "collate_fn": _Collate(len(dataset)),
        }
        if split == "train":
            return ResumableLoader(
                dataset, consumed=trainer_batches_done(trainer) if trainer else None, **kwargs
            )
        return DataLoader(dataset, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", self.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, False)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ShardSampler` whose position is part of the checkpoint.

    ``state_dict()`` is ``{"epoch", "batches_done"}``: the batches of the current epoch that
    training has *consumed*, read from the trainer's progress (``consumed``), because Lightning
    fetches one batch ahead and the loader's own count would be one too many. ``load_state_dict``
    makes the next iteration of that epoch start after them; every rank loads the same position,
    and all ranks' shards advance together.
    """

    def __init__(self, *args, consumed: Callable[[], int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.consumed = consumed

    def state_dict(self) -> dict[str, int]:
        sampler: ShardSampler = self.batch_sampler
        return {
            "epoch": int(sampler.epoch),
            "batches_done": int(self.consumed() if self.consumed else 0),
        }

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        self.batch_sampler.resume_at = (int(state_dict["epoch"]), int(state_dict["batches_done"]))


def trainer_batches_done(trainer) -> Callable[[], int]:
    """Training batches of the current epoch the trainer has run (including one whose
    ``on_train_batch_end`` is under way, which is where checkpoints are saved)."""
    return lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed


class _Collate:
    """Picklable ``collate_fn`` (workers and ``ddp_spawn`` pickle it)."""

    def __init__(self, num_total: int):
        self.num_total = num_total

    def __call__(self, items):
        return collate_items(items, self.num_total)


def load_saved_split(split: str, path: str) -> dict[str, torch.Tensor]:
    """Load ``<path>/<split>.pt`` (a dict of per-item tensors saved with ``torch.save``)."""
    file = os.path.join(path, f"{split}.pt")
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file} does not exist")
    try:
        return torch.load(file, weights_only=True)
    except Exception as error:  # pickle errors come in many types
        raise ValueError(f"{file} is not a torch.save'd dict of tensors: {error}") from error
