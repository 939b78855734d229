"""A semi-supervised generative classifier: labeled points observe their class, unlabeled points
enumerate it, in one model.

``batch``: ``features`` float ``[B, D]``, ``labels`` long ``[B]`` (any value where unlabeled),
``is_labeled`` bool ``[B]`` (optional; default ``labels >= 0``), ``index`` ``[B]``, ``num_total``.

Choice: ONE data plate with masks rather than two plates. The pipeline shards and subsamples a
single plate (:attr:`shard_plate`), and a minibatch mixes labeled and unlabeled points. Each point
has two class sites: ``class_observed`` (observed, masked to labeled points) and ``class_latent``
(enumerated, masked to unlabeled points). The emission uses the observed class where there is
one and the enumerated class elsewhere, so for a labeled point the enumerated class does not
touch any factor and sums out to one (Pyro ignores masks on enumerated sites, which is exactly
what makes this exact).

Model: ``class ~ Categorical(class_probs)``, ``features | class ~ Normal(locs[class],
scales[class])`` (diagonal), parameters as constrained ``PyroParam`` (maximum likelihood).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroParam
from torch.distributions import constraints

from enumdist.models.base import EnumModel
from enumdist.models.hmm_base import seeded


class SemiSupervisedClassifier(EnumModel):
    shard_plate = "data"
    max_plate_nesting = 1

    def __init__(self, num_features: int, num_classes: int, seed: int = 0, min_scale: float = 0.1):
        """``min_scale`` floors the class scales: a feature that is constant within a class
        (digits' blank pixels) would otherwise drive its scale, and the likelihood, to infinity."""
        super().__init__()
        self.num_features = num_features
        self.num_classes = num_classes
        with seeded(seed):
            locs = torch.randn(num_classes, num_features)
        self.class_probs = PyroParam(
            torch.full((num_classes,), 1.0 / num_classes), constraints.simplex
        )
        self.locs = PyroParam(locs)
        self.scales = PyroParam(
            torch.ones(num_classes, num_features), constraints.greater_than(min_scale)
        )

    def num_observations(self, batch):
        return int(batch["features"].shape[0])

    def state_sites(self, batch):
        return {"class": ["class_latent"]}

    @staticmethod
    def labeled_mask(batch) -> torch.Tensor:
        mask = batch.get("is_labeled")
        return batch["labels"] >= 0 if mask is None else mask.bool()

    def predict_probs(self, features: torch.Tensor) -> torch.Tensor:
        """Posterior class probabilities ``[B, C]`` of unlabeled points (for accuracy reports)."""
        log_joint = self.class_probs.log() + dist.Normal(self.locs, self.scales).log_prob(
            features.unsqueeze(-2)
        ).sum(-1)
        return log_joint.softmax(-1)

    def model(self, batch):
        features, labels = batch["features"], batch["labels"]
        if features.dim() != 2 or features.shape[-1] != self.num_features:
            raise ValueError(
                f"SemiSupervisedClassifier: batch['features'] must be "
                f"[B, {self.num_features}] (num_features), got {tuple(features.shape)}"
            )
        labeled = self.labeled_mask(batch)
        class_probs, locs, scales = self.class_probs, self.locs, self.scales
        prior = dist.Categorical(class_probs)
        with pyro.plate(self.shard_plate, batch["num_total"], subsample=batch["index"], dim=-1):
            with poutine.mask(mask=labeled):
                observed = pyro.sample("class_observed", prior, obs=labels.clamp(min=0))
            with poutine.mask(mask=~labeled):
                latent = pyro.sample("class_latent", prior, infer={"enumerate": "parallel"})
            klass = torch.where(labeled, observed, latent)
            pyro.sample(
                "features", dist.Normal(locs[klass], scales[klass]).to_event(1), obs=features
            )
