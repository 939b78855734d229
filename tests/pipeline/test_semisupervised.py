"""The semi-supervised experiment end to end: digits with ~10% of training labels, trained a few
steps; held-out loss and accuracy checked against the model's closed-form class posterior."""

from __future__ import annotations

import csv

import pyro
import pyro.distributions as dist
import pytest
import torch

from enumdist.data.tabular import (
    UNLABELED,
    load_partially_labeled,
    load_semisupervised_split,
)
from enumdist.models import SemiSupervisedClassifier
from tests.pipeline.test_train import final_state, train_with


def test_semisupervised_split_hides_held_out_labels_only():
    train = load_semisupervised_split("train", name="wine", labeled_fraction=0.3)
    test = load_semisupervised_split("test", name="wine", labeled_fraction=0.3)
    assert set(train) == {"features", "labels"}
    assert (train["labels"] == UNLABELED).any() and (train["labels"] >= 0).any()
    assert (test["labels"] == UNLABELED).all()
    assert torch.equal(test["true_labels"], load_partially_labeled("wine", "test").labels)


def test_digits_semisupervised_trains_and_reports_test_loss_and_accuracy(tmp_path):
    metrics = train_with(tmp_path, "experiment=digits_semisupervised", "trainer.max_steps=8")
    with open(tmp_path / "train_history.csv") as f:
        losses = [float(row["loss_per_obs"]) for row in csv.DictReader(f)]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert {"train/loss_per_obs", "test/loss_per_obs", "test/accuracy"} <= set(metrics)

    # oracle: the trained parameters' closed-form posterior over the class of each test point
    with pyro.settings.context(module_local_params=True):
        model = SemiSupervisedClassifier(num_features=64, num_classes=10)
    state = final_state(tmp_path)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    test = load_semisupervised_split("test", name="digits", labeled_fraction=0.1)
    with torch.no_grad():
        accuracy = (
            (model.predict_probs(test["features"]).argmax(-1) == test["true_labels"])
            .double()
            .mean()
        )
        log_joint = model.class_probs.log() + dist.Normal(model.locs, model.scales).log_prob(
            test["features"].unsqueeze(-2)
        ).sum(-1)
        loss_per_point = -torch.logsumexp(log_joint, -1).double().mean()
    # logged metrics are float32: 1e-6 is far below one test point (1 / ~270)
    assert metrics["test/accuracy"] == pytest.approx(float(accuracy), abs=1e-6)
    assert metrics["test/loss_per_obs"] == pytest.approx(float(loss_per_point), rel=1e-5)
    assert float(accuracy) > 0.1  # better than chance after a few steps
