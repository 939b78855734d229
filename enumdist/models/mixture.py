"""A Bayesian Gaussian mixture with the component assignment of each point enumerated.

``batch``: ``features`` float ``[B, D]``, ``index`` ``[B]``, ``num_total``.
Global latents ``weights ~ Dirichlet``, ``locs ~ Normal``, ``scales ~ LogNormal`` (diagonal) are
for an ``AutoDelta`` (MAP) or ``AutoNormal`` guide over :attr:`global_latents`; the assignment
``assignment`` is enumerated and must be hidden from the guide (see :meth:`guide_model`).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from enumdist.models.base import EnumModel


class GaussianMixture(EnumModel):
    shard_plate = "data"
    max_plate_nesting = 1
    #: the latent sites a guide must cover; everything else is enumerated or observed
    global_latents = ("weights", "locs", "scales")

    def __init__(
        self,
        num_features: int = 2,
        num_components: int = 3,
        concentration: float = 1.0,
        loc_scale: float = 5.0,
        log_scale_scale: float = 1.0,
        seed: int = 0,
    ):
        super().__init__()
        self.num_features = num_features
        self.num_components = num_components
        self.concentration = concentration
        self.loc_scale = loc_scale
        self.log_scale_scale = log_scale_scale
        self.seed = seed

    def num_observations(self, batch):
        return int(batch["features"].shape[0])

    def state_sites(self, batch):
        return {"assignment": ["assignment"]}

    def guide_model(self, batch):
        """The model with the enumerated assignment hidden: what an autoguide should trace."""
        return poutine.block(self.model, expose=list(self.global_latents))(batch)

    def init_loc_fn(self, site):
        """A reproducible guide init: uniform weights, unit scales, seeded random locs (spread,
        so that MAP does not start with all components equal). Pyro's default init draws from
        the prior with the global RNG."""
        C, D = self.num_components, self.num_features
        if site["name"] == "weights":
            return torch.full((C,), 1.0 / C)
        if site["name"] == "scales":
            return torch.ones(C, D)
        if site["name"] == "locs":
            g = torch.Generator().manual_seed(self.seed)
            return torch.randn(C, D, generator=g)
        raise ValueError(f"GaussianMixture.init_loc_fn: unknown latent site {site['name']!r}")

    def model(self, batch):
        features = batch["features"]
        if features.dim() != 2 or features.shape[-1] != self.num_features:
            raise ValueError(
                f"GaussianMixture: batch['features'] must be "
                f"[B, {self.num_features}] (num_features), got {tuple(features.shape)}"
            )
        C, D = self.num_components, self.num_features
        zeros = features.new_zeros(D)
        weights = pyro.sample(
            "weights", dist.Dirichlet(features.new_full((C,), self.concentration))
        )
        with pyro.plate("components", C, dim=-1):
            locs = pyro.sample("locs", dist.Normal(zeros, self.loc_scale).to_event(1))
            scales = pyro.sample("scales", dist.LogNormal(zeros, self.log_scale_scale).to_event(1))
        with pyro.plate(self.shard_plate, batch["num_total"], subsample=batch["index"], dim=-1):
            assignment = pyro.sample(
                "assignment", dist.Categorical(weights), infer={"enumerate": "parallel"}
            )
            pyro.sample(
                "obs", dist.Normal(locs[assignment], scales[assignment]).to_event(1), obs=features
            )
