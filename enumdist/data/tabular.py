"""Small real tabular data sets bundled with scikit-learn (offline), for mixture models and
semi-supervised classifiers.

- :func:`load_tabular` -- one split of iris / wine / digits / breast_cancer, standardized with the
  *training* split's mean and standard deviation (so no statistic leaks from valid/test).
  Use it for a Gaussian mixture (``load_tabular("iris", "train")``: 4 features, 3 classes).
- :func:`load_semisupervised` -- the same rows cut into labeled / unlabeled / valid / test for a
  semi-supervised classifier (default digits: 64 features, 10 classes, ~10% of training rows
  labeled); :func:`load_partially_labeled` gives the same rows one split at a time, with the
  withheld training labels set to ``UNLABELED`` (-1), for per-split data modules.
- :func:`load_semisupervised_split` -- what the training pipeline loads for a semi-supervised
  experiment: the partially labeled train split; valid/test with every label withheld (and kept
  aside as ``true_labels`` for accuracy).

Splits: row ``i`` of data set ``name`` goes to train/valid/test by SHA-256 of ``"name/i"``
(~70/15/15, :mod:`enumdist.data.splits`); within train, a row is labeled iff a second hash with
another salt falls below ``labeled_fraction``. Both are deterministic and need no seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from enumdist.data.splits import SPLITS, assign_split, check_split, unit_hash

_LOADERS = ("iris", "wine", "digits", "breast_cancer")
UNLABELED = -1


@dataclass(frozen=True)
class TabularData:
    """Rows of one split.

    Attributes:
        features: [N, D] standardized features (train mean 0, train std 1; constant columns are
            only centred).
        labels: long [N] class ids in ``0..len(class_names)-1``, or ``UNLABELED`` (-1) where the
            label is withheld (the unlabeled part of a semi-supervised split).
        feature_names: D names.
        class_names: the classes' names.
    """

    features: torch.Tensor
    labels: torch.Tensor
    feature_names: list[str]
    class_names: list[str]

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class SemiSupervisedSplits:
    """``labeled`` and ``unlabeled`` partition the training split; ``unlabeled.labels`` are all
    ``UNLABELED``; ``valid`` and ``test`` carry their labels, for model selection and reporting."""

    labeled: TabularData
    unlabeled: TabularData
    valid: TabularData
    test: TabularData


def _raw(name: str):
    """(features float64 [N, D], labels [N], feature names, class names) of a bundled set."""
    import sklearn.datasets

    if name not in _LOADERS:
        raise ValueError(f"unknown tabular data set {name!r}; choose one of {', '.join(_LOADERS)}")
    bunch = getattr(sklearn.datasets, f"load_{name}")()
    feature_names = [str(f) for f in getattr(bunch, "feature_names", range(bunch.data.shape[1]))]
    class_names = [str(c) for c in bunch.target_names]
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64), feature_names, class_names


def _split_rows(name: str, num_rows: int) -> dict[str, np.ndarray]:
    assigned = np.array([assign_split(f"{name}/{i}", salt="tabular") for i in range(num_rows)])
    return {split: np.nonzero(assigned == split)[0] for split in SPLITS}


def _standardize(features: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    mean = features[train_rows].mean(axis=0)
    std = features[train_rows].std(axis=0)
    # Constant columns (e.g. the always-blank corner pixels of digits) would divide by zero.
    std = np.where(std > 0, std, 1.0)
    return (features - mean) / std


def _as_tabular(features, labels, rows, feature_names, class_names, dtype) -> TabularData:
    return TabularData(
        features=torch.as_tensor(features[rows], dtype=dtype),
        labels=torch.as_tensor(labels[rows], dtype=torch.long),
        feature_names=feature_names,
        class_names=class_names,
    )


def load_tabular(name: str, split: str, *, dtype: torch.dtype = torch.float32) -> TabularData:
    """Split ``split`` of scikit-learn's bundled data set ``name`` (iris, wine, digits,
    breast_cancer), standardized with training statistics, features cast to ``dtype``."""
    check_split(split)
    features, labels, feature_names, class_names = _raw(name)
    rows = _split_rows(name, len(labels))
    features = _standardize(features, rows["train"])
    return _as_tabular(features, labels, rows[split], feature_names, class_names, dtype)


def load_partially_labeled(
    name: str = "digits",
    split: str = "train",
    *,
    labeled_fraction: float = 0.1,
    dtype: torch.dtype = torch.float32,
) -> TabularData:
    """Like :func:`load_tabular`, but in the ``train`` split only about ``labeled_fraction`` of
    the rows keep their label; the others have ``UNLABELED`` (-1). ``valid``/``test`` keep all
    labels. One table per split, so it plugs into a per-split data module; a semi-supervised
    model treats ``labels == UNLABELED`` as a latent class."""
    check_split(split)
    if not 0 < labeled_fraction <= 1:
        raise ValueError(f"labeled_fraction must lie in (0, 1], got {labeled_fraction}")
    features, labels, feature_names, class_names = _raw(name)
    rows = _split_rows(name, len(labels))
    features = _standardize(features, rows["train"])
    if split == "train":
        withheld = np.array(
            [unit_hash(f"{name}/{i}", "labeled") >= labeled_fraction for i in range(len(labels))]
        )
        labels = np.where(withheld, UNLABELED, labels)
        missing = sorted(set(range(len(class_names))) - set(labels[rows["train"]].tolist()))
        if missing:
            raise ValueError(
                f"{name}: with labeled_fraction={labeled_fraction} no labeled row of classes "
                f"{[class_names[c] for c in missing]} remains; raise labeled_fraction"
            )
    return _as_tabular(features, labels, rows[split], feature_names, class_names, dtype)


def load_semisupervised(
    name: str = "digits", *, labeled_fraction: float = 0.1, dtype: torch.dtype = torch.float32
) -> SemiSupervisedSplits:
    """All four parts at once: the training rows of :func:`load_partially_labeled` separated
    into labeled and unlabeled, plus valid and test."""
    load = dict(name=name, labeled_fraction=labeled_fraction, dtype=dtype)
    train = load_partially_labeled(split="train", **load)
    is_labeled = train.labels != UNLABELED

    def rows(mask):
        return TabularData(
            train.features[mask], train.labels[mask], train.feature_names, train.class_names
        )

    return SemiSupervisedSplits(
        labeled=rows(is_labeled),
        unlabeled=rows(~is_labeled),
        valid=load_partially_labeled(split="valid", **load),
        test=load_partially_labeled(split="test", **load),
    )


def load_semisupervised_split(
    split: str,
    *,
    name: str = "digits",
    labeled_fraction: float = 0.1,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """One split for training a semi-supervised classifier with a per-split data module.

    Returns ``{"features": [N, D], "labels": long [N]}``: in ``train`` the labels of
    :func:`load_partially_labeled` (labeled and unlabeled rows together, one table); in
    ``valid``/``test`` *every* label is ``UNLABELED``, so that the model enumerates the class and
    the held-out loss is ``-log p(features)``, the score of an unlabeled point. Those splits also
    carry ``"true_labels"`` long [N], the withheld labels, for accuracy metrics; the model never
    reads that key.
    """
    data = load_partially_labeled(name, split, labeled_fraction=labeled_fraction, dtype=dtype)
    if split == "train":
        return {"features": data.features, "labels": data.labels}
    return {
        "features": data.features,
        "labels": torch.full_like(data.labels, UNLABELED),
        "true_labels": data.labels,
    }
