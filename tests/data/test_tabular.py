import pytest
import torch

from enumdist.data.splits import SPLITS
from enumdist.data.tabular import (
    UNLABELED,
    load_partially_labeled,
    load_semisupervised,
    load_tabular,
)


@pytest.mark.parametrize("name, num_features, num_classes", [("iris", 4, 3), ("wine", 13, 3)])
def test_mixture_data_is_standardized_on_train(name, num_features, num_classes):
    splits = {s: load_tabular(name, s) for s in SPLITS}
    train = splits["train"]
    assert train.features.shape[1] == num_features and train.num_classes == num_classes
    assert torch.allclose(train.features.mean(0), torch.zeros(num_features), atol=1e-5)
    assert torch.allclose(
        train.features.std(0, unbiased=False), torch.ones(num_features), atol=1e-4
    )
    assert sum(len(d) for d in splits.values()) == {"iris": 150, "wine": 178}[name]
    assert all(len(d) > 10 for d in splits.values())


def test_split_is_deterministic_and_dtype_is_honoured():
    a, b = load_tabular("iris", "test"), load_tabular("iris", "test", dtype=torch.float64)
    assert b.features.dtype == torch.float64 and torch.equal(a.labels, b.labels)
    assert torch.allclose(a.features.double(), b.features, atol=1e-6)


def test_semisupervised_partition():
    data = load_semisupervised("digits", labeled_fraction=0.1)
    assert data.labeled.features.shape[1] == 64
    assert (data.unlabeled.labels == UNLABELED).all() and (data.labeled.labels >= 0).all()
    assert set(data.labeled.labels.tolist()) == set(range(10))
    assert len(data.labeled) + len(data.unlabeled) == len(load_tabular("digits", "train"))
    assert 0.05 < len(data.labeled) / (len(data.labeled) + len(data.unlabeled)) < 0.15
    assert len(data.test) == len(load_tabular("digits", "test")) and (data.test.labels >= 0).all()


def test_partially_labeled_splits_agree_with_the_four_way_split():
    data = load_semisupervised("wine", labeled_fraction=0.3)
    train = load_partially_labeled("wine", "train", labeled_fraction=0.3)
    assert len(train) == len(data.labeled) + len(data.unlabeled)
    assert torch.equal(train.features[train.labels >= 0], data.labeled.features)
    assert torch.equal(
        load_partially_labeled("wine", "test").labels, load_tabular("wine", "test").labels
    )


def test_errors_name_the_choice():
    with pytest.raises(ValueError, match="unknown tabular data set 'mnist'; choose one of iris"):
        load_tabular("mnist", "train")
    with pytest.raises(ValueError, match="no labeled row of classes"):
        load_semisupervised("iris", labeled_fraction=0.001)
    with pytest.raises(ValueError, match=r"labeled_fraction must lie in \(0, 1\]"):
        load_semisupervised(labeled_fraction=0)
