"""Items keep their own names (for decoded output) through the DataModule."""

from functools import partial

import pytest
import torch

from enumdist.data.text import TextCorpus
from enumdist.pipeline.data import ShardedDataModule, load_saved_split


def test_names_of_a_saved_split_survive_max_items(tmp_path):
    torch.save({"features": torch.zeros(3, 2), "names": ["a", "b", "c"]}, tmp_path / "test.pt")
    datamodule = ShardedDataModule(partial(load_saved_split, path=str(tmp_path)), max_items=2)
    assert datamodule.load_split("test").names == ["a", "b"]


def test_a_dataclass_loaders_names_are_kept_and_unnamed_data_has_none():
    corpus = TextCorpus(
        documents=torch.zeros(2, 3, dtype=torch.long),
        lengths=torch.tensor([3, 2]),
        vocab=["w"],
        names=["os.path", "json"],
    )
    assert ShardedDataModule(lambda split: corpus).load_split("test").names == ["os.path", "json"]
    unnamed = ShardedDataModule(lambda split: {"features": torch.zeros(2, 1)})
    assert unnamed.load_split("test").names is None


def test_names_that_do_not_fit_the_items_are_refused():
    datamodule = ShardedDataModule(lambda split: {"features": torch.zeros(2, 1), "names": ["a"]})
    with pytest.raises(ValueError, match="'names' holds 1 entries for 2 items"):
        datamodule.load_split("test")
