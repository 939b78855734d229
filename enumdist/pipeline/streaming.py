"""A DataModule that streams piano-roll minibatches straight from Parquet shards (out of core).

For data sets too large to hold in memory (:mod:`enumdist.data.synthetic` writes them). Batches
look exactly like :class:`~enumdist.pipeline.data.ShardedDataModule`'s -- ``{"sequences" [B, T, K],
"lengths" [B], "index" [B], "num_total": N}`` -- so the zoo models run unchanged, with the data
plate subsampled by ``index`` and ``num_total`` = the split's size.

Memory per rank does not grow with N: a rank holds the item lengths (2 bytes per item, to pad
every rank to the global batch's longest sequence), and at most ``cache_shards`` decoded shards
(sparse: the sounding keys only); dense rolls exist only for the current batch.

Order (training). Epoch ``e`` permutes the shards with seed ``(seed, e)``; rank ``r`` owns every
``world_size``-th shard of that order (so it reads only its own items' files) and walks them in
groups of ``shuffle_shards``, each group's items in a permutation seeded by ``(seed, e, r, group)``.
Step ``s`` takes the next ``batch_size`` items of every rank's stream: the union is the global
batch of the sharded ELBO. All ranks take ``min_r(items_r // batch_size)`` steps (leftovers of an
epoch are dropped; they differ from epoch to epoch). Everything is a function of
``(seed, epoch, step)``: :meth:`StreamSampler.state_dict` is ``{"epoch", "step"}`` and a resumed
run continues with the same items in the same order. Evaluation walks the split in order, each
global batch split across ranks as :class:`~enumdist.pipeline.data.ShardSampler` does; decoding
reads each step's items straight from the shards (:meth:`StreamingDataModule.streamed_split`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from enumdist.data.synthetic import read_manifest
from enumdist.pipeline.batches import make_batch
from enumdist.pipeline.data import SPLITS, ShardSampler


def _concatenated_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])`` without a python loop."""
    total = int(counts.sum())
    ends = np.cumsum(counts)
    return np.arange(total) - np.repeat(ends - counts, counts) + np.repeat(starts, counts)


class ShardedSplit:
    """One split's shard files: item offsets, lengths, and a small cache of decoded shards."""

    def __init__(self, root: str | Path, split: str, cache_shards: int = 4):
        self.root, self.split = Path(root), split
        self.spec = read_manifest(root)["spec"]
        self.num_keys = int(self.spec["num_keys"])
        self.files = sorted((self.root / split).glob("shard-*.parquet"))
        if not self.files:
            raise FileNotFoundError(
                f"{self.root / split}: no shards; generate the data first "
                f"(python -m enumdist.data.synthetic --root {self.root})"
            )
        counts = [pq.ParquetFile(f).metadata.num_rows for f in self.files]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.num_items = int(self.offsets[-1])
        expected = dict(self.spec["num_items"]).get(split)
        if expected is not None and expected != self.num_items:
            raise ValueError(
                f"{self.root / split}: {self.num_items} items in the shards, the manifest "
                f"says {expected}: generation was interrupted; rerun it to finish"
            )
        self.lengths = np.concatenate(
            [pq.read_table(f, columns=["length"])["length"].to_numpy() for f in self.files]
        ).astype(np.int16)
        self.cache_shards = cache_shards
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self.shard_reads = 0  # how many times a shard file was read (for tests and benchmarks)

    def __len__(self) -> int:
        return self.num_items

    def shard_items(self, shard: int) -> np.ndarray:
        return np.arange(self.offsets[shard], self.offsets[shard + 1])

    def _decoded(self, shard: int):
        """``(item_step_offsets, step_key_offsets, keys)`` of a shard (numpy, sparse)."""
        if shard in self._cache:
            self._cache.move_to_end(shard)
            return self._cache[shard]
        column = pq.read_table(self.files[shard], columns=["keys"])["keys"].combine_chunks()
        steps = column.values
        decoded = (
            column.offsets.to_numpy(),
            steps.offsets.to_numpy(),
            steps.values.to_numpy().astype(np.int64),
        )
        self.shard_reads += 1
        self._cache[shard] = decoded
        if len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return decoded

    def dense_batch(self, items: np.ndarray, num_steps: int) -> dict[str, Any]:
        """The batch of ``items`` (positions in the split) as dense rolls ``[B, num_steps, K]``."""
        items = np.asarray(items, dtype=np.int64)
        sequences = torch.zeros(len(items), num_steps, self.num_keys)
        shards = np.searchsorted(self.offsets, items, side="right") - 1
        for shard in np.unique(shards):
            where = np.nonzero(shards == shard)[0]
            b, t, k = self._sounding(shard, items[where] - self.offsets[shard])
            inside = t < num_steps
            sequences[where[b[inside]], t[inside], k[inside]] = 1.0
        lengths = torch.from_numpy(self.lengths[items].astype(np.int64))
        return make_batch(
            {"sequences": sequences, "lengths": lengths},
            torch.from_numpy(items),
            self.num_items,
            num_steps,
        )

    def _sounding(self, shard: int, rows: np.ndarray):
        """``(row position, step, key)`` of every sounding key of ``rows`` of ``shard`` (vectorised)."""
        item_steps, step_keys, flat = self._decoded(int(shard))
        steps_per_row = item_steps[rows + 1] - item_steps[rows]
        step_ids = _concatenated_ranges(item_steps[rows], steps_per_row)
        row_of_step = np.repeat(np.arange(len(rows)), steps_per_row)
        t = step_ids - np.repeat(item_steps[rows], steps_per_row)
        keys_per_step = step_keys[step_ids + 1] - step_keys[step_ids]
        keys = flat[_concatenated_ranges(step_keys[step_ids], keys_per_step)]
        return (
            torch.from_numpy(np.repeat(row_of_step, keys_per_step)),
            torch.from_numpy(np.repeat(t, keys_per_step)),
            torch.from_numpy(keys),
        )

    def true_states(self, items: np.ndarray) -> dict[str, list[np.ndarray]]:
        """The true hidden states of ``items`` (chain -> one array per item), for recovery checks."""
        from enumdist.data.synthetic import MODELS

        chains = MODELS[self.spec["model"]]
        items = np.asarray(items, dtype=np.int64)
        shards = np.searchsorted(self.offsets, items, side="right") - 1
        out: dict[str, list[np.ndarray]] = {c: [] for c in chains}
        for shard in np.unique(shards):
            table = pq.read_table(self.files[shard], columns=list(chains))
            for item in items[shards == shard]:
                for c in chains:
                    out[c].append(np.asarray(table[c][int(item - self.offsets[shard])].as_py()))
        return out


class StreamSampler(Sampler[list[int]]):
    """Per step, this rank's items of the global batch (module docstring), resumable.

    Yields lists of ``(item, steps)``: ``steps`` is the global batch's longest sequence.
    """

    def __init__(
        self,
        split: ShardedSplit,
        rank: int,
        world_size: int,
        batch_size: int,
        seed: int = 0,
        shuffle_shards: int = 2,
    ):
        if len(split.files) < world_size:
            raise ValueError(
                f"{split.root / split.split}: {len(split.files)} shards cannot be shared "
                f"by {world_size} ranks; generate with a smaller shard_size"
            )
        self.split, self.rank, self.world_size = split, rank, world_size
        self.batch_size, self.seed, self.shuffle_shards = batch_size, seed, shuffle_shards
        self.epoch, self.step = 0, 0

    @property
    def sampler(self) -> StreamSampler:
        return self  # Lightning calls set_epoch on ``batch_sampler.sampler``

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.step = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def _own_shards(self, rank: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.split.files))
        return order[rank :: self.world_size]

    def _stream(self, rank: int) -> Iterator[np.ndarray]:
        """Rank ``rank``'s items of this epoch, one shuffled group of shards at a time."""
        shards = self._own_shards(rank)
        for group, start in enumerate(range(0, len(shards), self.shuffle_shards)):
            items = np.concatenate(
                [self.split.shard_items(s) for s in shards[start : start + self.shuffle_shards]]
            )
            yield items[
                np.random.default_rng([self.seed, self.epoch, rank, group]).permutation(len(items))
            ]

    def _items_per_rank(self) -> int:
        return min(
            sum(int(self.split.offsets[s + 1] - self.split.offsets[s]) for s in self._own_shards(r))
            for r in range(self.world_size)
        )

    def _step_size(self) -> int:
        """``batch_size``, or every rank's whole stream when that holds fewer items (tiny runs)."""
        return min(self.batch_size, self._items_per_rank())

    def _batches(self, rank: int) -> Iterator[np.ndarray]:
        size = self._step_size()
        pending = np.empty(0, dtype=np.int64)
        for items in self._stream(rank):
            pending = np.concatenate([pending, items])
            while len(pending) >= size:
                yield pending[:size]
                pending = pending[size:]

    def __len__(self) -> int:
        return self._items_per_rank() // self._step_size()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        num_steps = len(self)
        streams = [self._batches(r) for r in range(self.world_size)]
        for step, batches in enumerate(zip(*streams)):
            if step >= num_steps:
                break
            if step < self.step:  # resuming: these steps ran before the checkpoint
                continue
            steps = int(max(self.split.lengths[b].max() for b in batches))
            self.step = step + 1
            yield [(int(i), steps) for i in batches[self.rank]]
        self.epoch, self.step = self.epoch + 1, 0


class _Items(Dataset):
    """Map-style view whose batch fetch is done by :class:`_DenseCollate` (keys pass through)."""

    def __init__(self, split: ShardedSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        return key


class _DenseCollate:
    def __init__(self, split: ShardedSplit):
        self.split = split

    def __call__(self, keys: list[tuple[int, int]]) -> dict[str, Any]:
        return self.split.dense_batch(np.array([i for i, _ in keys]), keys[0][1])


class StreamingDataModule(pl.LightningDataModule):
    """Serves ``root``'s shards (see :mod:`enumdist.data.synthetic`) to each rank, out of core.

    Args:
        root: the data set's directory.
        batch_size: items per rank per training step.
        eval_batch_size: items per rank per valid/test step.
        seed: base seed of the training order.
        shuffle_shards: shards whose items are shuffled together (more = better mixed, more memory).
        max_eval_items: evaluate on the first ``max_eval_items`` of valid/test only.
        generate: :class:`~enumdist.data.synthetic.SyntheticSpec` fields (``num_train``,
            ``num_eval`` for the split sizes); the data set is generated into ``root`` (resumably,
            on rank 0 in ``prepare_data``) when ``root`` holds none. ``None``: ``root`` must exist.
        max_items: quick runs: a data set of at most ``max_items`` items per split, generated
            from ``generate`` into ``<root>-max<max_items>`` (requires ``generate``).
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        seed: int = 0,
        shuffle_shards: int = 2,
        max_eval_items: int | None = None,
        generate: dict | None = None,
        max_items: int | None = None,
    ):
        super().__init__()
        if max_items is not None and generate is None:
            raise ValueError("data.max_items needs data.generate (a smaller data set is generated)")
        self.root = root if max_items is None else f"{root}-max{max_items}"
        self.generate, self.max_items = generate, max_items
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed, self.shuffle_shards, self.max_eval_items = seed, shuffle_shards, max_eval_items
        self.splits: dict[str, ShardedSplit] = {}
        self.train_sampler: StreamSampler | None = None
        self._restored: dict[str, int] | None = None  # sampler state from a checkpoint

    def spec(self):
        """The :class:`~enumdist.data.synthetic.SyntheticSpec` of ``generate`` (``max_items`` applied)."""
        from enumdist.data.synthetic import SyntheticSpec

        fields = dict(self.generate)
        cap = self.max_items or float("inf")
        num_train, num_eval = fields.pop("num_train"), fields.pop("num_eval")
        return SyntheticSpec.of_sizes(min(num_train, cap), min(num_eval, cap), **fields)

    def prepare_data(self) -> None:
        if self.generate is not None and not (Path(self.root) / "manifest.json").exists():
            from enumdist.data.synthetic import generate

            generate(self.root, self.spec())

    def setup(self, stage: str | None = None) -> None:
        if self.generate is not None and not (Path(self.root) / "manifest.json").exists():
            self.prepare_data()  # outside a Trainer (decoding, scripts): nobody called it
        for split in SPLITS:
            if split not in self.splits:
                self.splits[split] = ShardedSplit(
                    self.root, split, cache_shards=2 * self.shuffle_shards + 1
                )

    def streamed_split(self, split: str) -> ShardedSplit:
        """``split``'s shards, read a batch at a time: the decoding stage decodes the whole split
        from them in bounded memory (:class:`enumdist.decoding.items.StreamedItems`)."""
        self.setup()
        return self.splits[split]

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def probe_batch(self, split: str = "train", num_items: int = 8) -> dict[str, Any]:
        """A few items of ``split`` (for tracing the model's plates, building the guide)."""
        self.setup()
        data = self.splits[split]
        items = np.arange(min(num_items, len(data)))
        return data.dense_batch(items, int(data.lengths[items].max()))

    def count_observations(self, num_observations, split: str = "train", chunk: int = 256) -> int:
        """``sum(num_observations(batch))`` over the whole split, exactly, in bounded memory.

        When ``num_observations`` counts time steps (as the HMM family does; checked on the first
        chunk) the sum of the stored lengths is that count; otherwise the split is counted a chunk
        at a time (slow at 10^6 items: every roll is made dense once).
        """
        self.setup()
        data = self.splits[split]
        first = np.arange(min(chunk, len(data)))
        first_batch = data.dense_batch(first, int(data.lengths[first].max()))
        if int(num_observations(first_batch)) == int(first_batch["lengths"].sum()):
            return int(data.lengths.astype(np.int64).sum())
        total = 0
        for start in range(0, len(data), chunk):
            items = np.arange(start, min(start + chunk, len(data)))
            total += int(num_observations(data.dense_batch(items, int(data.lengths[items].max()))))
        return total

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank()
        data = self.splits["train"]
        sampler = StreamSampler(
            data, rank, world_size, self.batch_size, self.seed, self.shuffle_shards
        )
        if self._restored is not None:  # a resumed run continues where the checkpoint was taken
            sampler.load_state_dict(self._restored)
            self._restored = None
        self.train_sampler = sampler
        return DataLoader(_Items(data), batch_sampler=sampler, collate_fn=_DenseCollate(data))

    def _eval_loader(self, split: str) -> DataLoader:
        rank, world_size = self._rank()
        data = self.splits[split]
        num_items = (
            len(data) if self.max_eval_items is None else min(self.max_eval_items, len(data))
        )
        sampler = ShardSampler(
            num_items,
            rank,
            world_size,
            self.eval_batch_size,
            shuffle=False,
            seed=self.seed,
            lengths=torch.from_numpy(data.lengths[:num_items].astype(np.int64)),
        )
        return DataLoader(_Items(data), batch_sampler=sampler, collate_fn=_DenseCollate(data))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def state_dict(self) -> dict[str, Any]:
        """The training order's position, saved in checkpoints by Lightning. Counted from the
        trainer's *completed* batches: the sampler itself runs ahead by the loader's prefetch."""
        trainer = self.trainer
        if trainer is None:
            return {"train_sampler": self.train_sampler.state_dict()} if self.train_sampler else {}
        completed = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return {"train_sampler": {"epoch": trainer.current_epoch, "step": completed}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = state.get("train_sampler")
