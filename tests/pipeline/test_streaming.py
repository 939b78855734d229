"""The streaming DataModule: per-rank shards, deterministic order, resumable, batches as in memory."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from enumdist.data.synthetic import SyntheticSpec
from enumdist.pipeline.streaming import ShardedSplit, StreamingDataModule, StreamSampler

SPEC = SyntheticSpec.of_sizes(
    800, 50, 70, num_keys=10, hidden_dim=3, max_length=60, shard_size=100, seed=2
)


@pytest.fixture(scope="module")
def root(synthetic_root):
    return synthetic_root(SPEC)


def order(split, rank, world_size, epoch=0, seed=0):
    sampler = StreamSampler(split, rank, world_size, batch_size=16, seed=seed)
    sampler.set_epoch(epoch)
    return [[i for i, _ in batch] for batch in sampler]


def test_ranks_get_disjoint_items_from_their_own_shards(root):
    split = ShardedSplit(root, "train")
    rank0, rank1 = order(split, 0, 2), order(split, 1, 2)
    assert len(rank0) == len(rank1) == 400 // 16
    items0, items1 = {i for b in rank0 for i in b}, {i for b in rank1 for i in b}
    assert not items0 & items1
    shards0, shards1 = {i // 100 for i in items0}, {i // 100 for i in items1}
    assert not shards0 & shards1 and len(shards0) == len(shards1) == 4


def test_order_is_deterministic_per_seed_and_epoch(root):
    split = ShardedSplit(root, "train")
    assert order(split, 0, 2) == order(split, 0, 2)
    assert order(split, 0, 2, epoch=1) != order(split, 0, 2)
    assert order(split, 0, 2, seed=1) != order(split, 0, 2)
    items = sorted(i for b in order(split, 0, 1) for i in b)
    assert items == list(range(800))  # one rank: every item once per epoch


def test_resumed_sampler_continues_with_the_same_order(root):
    split = ShardedSplit(root, "train")
    full = order(split, 1, 2, epoch=3)
    sampler = StreamSampler(split, 1, 2, batch_size=16)
    sampler.set_epoch(3)
    iterator = iter(sampler)
    first = [[i for i, _ in next(iterator)] for _ in range(7)]
    state = sampler.state_dict()
    assert state == {"epoch": 3, "step": 7}
    resumed = StreamSampler(split, 1, 2, batch_size=16)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # Lightning does this on resume; it must not rewind
    assert first + [[i for i, _ in b] for b in resumed] == full


def test_every_rank_pads_to_the_global_batch_longest_sequence(root):
    split = ShardedSplit(root, "train")
    batches = [list(StreamSampler(split, r, 2, batch_size=16)) for r in range(2)]
    for b0, b1 in zip(*batches):
        steps = {s for _, s in b0} | {s for _, s in b1}
        assert len(steps) == 1
        assert steps.pop() == max(split.lengths[[i for i, _ in b0 + b1]])


def test_dense_batch_equals_the_stored_sparse_rolls(root):
    split = ShardedSplit(root, "train")
    items = np.array([5, 150, 799, 6, 420])
    batch = split.dense_batch(items, 60)
    assert batch["sequences"].shape == (5, 60, 10) and batch["num_total"] == 800
    assert batch["index"].tolist() == items.tolist()
    rows = pq.read_table(root / "train").to_pylist()
    for b, item in enumerate(items):
        row = rows[item]
        assert batch["lengths"][b] == row["length"]
        for t in range(60):
            expected = sorted(row["keys"][t]) if t < row["length"] else []
            assert np.nonzero(batch["sequences"][b, t].numpy())[0].tolist() == expected


def test_cache_bounds_the_decoded_shards(root):
    split = ShardedSplit(root, "train", cache_shards=2)
    for batch in StreamSampler(split, 0, 1, batch_size=16, shuffle_shards=1):
        split.dense_batch(np.array([i for i, _ in batch]), batch[0][1])
        assert len(split._cache) <= 2
    assert split.shard_reads == 8  # each shard read once per epoch


def test_evaluation_covers_the_split_once_over_ranks(root):
    datamodule = StreamingDataModule(str(root), eval_batch_size=16)
    datamodule.setup()
    seen = []
    for rank in range(2):
        datamodule._rank = lambda rank=rank: (rank, 2)
        seen += [i for b in datamodule.test_dataloader() for i in b["index"].tolist()]
    assert sorted(seen) == list(range(70))


def test_observations_are_counted_exactly(root):
    from enumdist.models import HMM

    datamodule = StreamingDataModule(str(root))
    lengths = pq.read_table(root / "train", columns=["length"])["length"].to_numpy()
    assert (
        datamodule.count_observations(HMM(num_keys=10, hidden_dim=3).num_observations)
        == lengths.sum()
    )
    # a count that is not the number of steps takes the chunked path, still exact
    assert datamodule.count_observations(lambda batch: int(batch["sequences"].sum())) == sum(
        len(step)
        for row in pq.read_table(root / "train", columns=["keys"])["keys"].to_pylist()
        for step in row
    )
