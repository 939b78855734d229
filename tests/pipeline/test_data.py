import pytest
import torch

from enumdist.pipeline.data import ShardedDataModule, ShardSampler, as_item_table, collate_items
from tests.pipeline.toy import toy_sequences


@pytest.mark.parametrize("batch_size", [None, 2, 3])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_are_disjoint_and_cover_each_global_batch(batch_size, world_size):
    samplers = [
        ShardSampler(11, r, world_size, batch_size, shuffle=True, seed=0) for r in range(world_size)
    ]
    for sampler in samplers:
        sampler.set_epoch(1)
    steps = [list(s) for s in samplers]
    assert len({len(s) for s in steps}) == 1, "every rank must see the same number of steps"
    seen = []
    for shards in zip(*steps):
        assert all(shards), "no rank may get an empty shard"
        flat = [i for shard in shards for i in shard]
        assert len(flat) == len(set(flat)), "an item was given to two ranks"
        seen += flat
    assert len(seen) == len(set(seen))
    if batch_size is None:
        assert sorted(seen) == list(range(11))


def test_minibatch_order_depends_on_epoch():
    sampler = ShardSampler(10, 0, 1, 5, shuffle=True, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_collate_pads_to_longest_and_passes_index_and_total():
    table = as_item_table(toy_sequences("train", num_items=5, max_steps=6), "test")
    table["lengths"][:] = torch.tensor([2, 3, 2, 6, 1])
    batch = collate_items(
        [(i, {k: v[i] for k, v in table.items()}, None) for i in (0, 1, 2)], num_total=5
    )
    assert batch["sequences"].shape == (3, 3, 4)
    padded = collate_items(
        [(i, {k: v[i] for k, v in table.items()}, 6) for i in (0, 1)], num_total=5
    )
    assert padded["sequences"].shape == (2, 6, 4)
    assert batch["index"].tolist() == [0, 1, 2] and batch["num_total"] == 5


def test_datamodule_gives_each_rank_its_own_shard():
    class FakeTrainer:
        def __init__(self, rank):
            self.global_rank, self.world_size = rank, 2

    batches = []
    for rank in (0, 1):
        datamodule = ShardedDataModule(lambda split: toy_sequences(split, num_items=7))
        datamodule.trainer = FakeTrainer(rank)
        datamodule.setup()
        batches.append(next(iter(datamodule.train_dataloader())))
    assert set(batches[0]["index"].tolist()).isdisjoint(batches[1]["index"].tolist())
    assert sorted(batches[0]["index"].tolist() + batches[1]["index"].tolist()) == list(range(7))
    # both ranks run the same number of steps: the longest sequence of the global batch
    assert batches[0]["sequences"].shape[1] == batches[1]["sequences"].shape[1]
    assert batches[0]["num_total"] == batches[1]["num_total"] == 7


@pytest.mark.parametrize(
    "loaded, message",
    [
        ({"sequences": torch.zeros(0, 3, 4), "lengths": torch.zeros(0)}, "empty"),
        ({"features": torch.tensor([1.0, float("nan")])}, "NaN"),
        ({"sequences": torch.zeros(2, 3, 4), "lengths": torch.tensor([2, 5])}, "lengths"),
        ({"names": ["a", "b"]}, "no tensor fields"),
        ([1, 2, 3], "expected a dataclass or a dict"),
    ],
)
def test_malformed_data_is_refused_with_the_split_named(loaded, message):
    datamodule = ShardedDataModule(lambda split: loaded)
    with pytest.raises(ValueError, match=message) as error:
        datamodule.setup()
    assert "split 'train'" in str(error.value)


def test_missing_data_names_the_path(tmp_path):
    from enumdist.pipeline.data import load_saved_split

    datamodule = ShardedDataModule(
        lambda split: load_saved_split(split, path=str(tmp_path / "nowhere"))
    )
    with pytest.raises(FileNotFoundError, match="nowhere/train.pt"):
        datamodule.setup()
