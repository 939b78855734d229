"""The engine's own Pyro handlers, one small job each (validated when built, as Pyro's poutine
handlers are):

* :class:`EnumRequests` -- innermost: records which sites asked for enumeration and reports
  layout problems in our words before Pyro's broadcasting fails;
* :class:`FixValues` -- sets latent sites to given values (sequential enumeration's runs,
  posterior samples replayed);
* :class:`AsParallel` -- treats ``enumerate="sequential"`` model sites as parallel ones.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyro.poutine.messenger import Messenger

from enumdist.engine.errors import EnumerationError
from enumdist.engine.guide_enum import num_samples


class EnumRequests(Messenger):
    """Innermost handler: checks each sample site before Pyro's handlers act on it.

    It sees the site as the program wrote it (``replay`` later overwrites ``infer``), so it
    records which sites asked for enumeration, and it reports layout problems -- a plate at a
    dim where enumeration dims live, enumeration of a continuous site -- in our words, before
    Pyro's broadcasting fails with a shape mismatch.
    """

    def __init__(self, first_available_dim: int, who: str):
        super().__init__()
        if not isinstance(first_available_dim, int) or first_available_dim >= 0:
            raise ValueError(
                f"first_available_dim must be a negative int, got {first_available_dim!r}"
            )
        if who not in ("model", "guide"):
            raise ValueError(f"who must be 'model' or 'guide', got {who!r}")
        self.first_available_dim = first_available_dim
        self.who = who
        self.requested: set[str] = set()

    def _pyro_sample(self, msg):
        for frame in msg["cond_indep_stack"]:
            if frame.vectorized and frame.dim <= self.first_available_dim:
                nesting = -1 - self.first_available_dim
                raise EnumerationError(
                    f"plate '{frame.name}' (at {self.who} site '{msg['name']}') sits at dim "
                    f"{frame.dim}, but enumeration dims start at first_available_dim="
                    f"{self.first_available_dim} (max_plate_nesting={nesting}). Pass "
                    f"max_plate_nesting={-frame.dim} (first_available_dim={frame.dim - 1}) or "
                    "more, or give every plate an explicit dim= (a plate without dim= takes "
                    "the next free dim on the left)."
                )
        how = msg["infer"].get("enumerate")
        if not how or msg["is_observed"]:
            return
        monte_carlo = self.who == "guide" and num_samples(msg) is not None
        if not monte_carlo and not getattr(msg["fn"], "has_enumerate_support", False):
            raise EnumerationError(
                f"{self.who} site '{msg['name']}' asks for enumeration but its "
                f"{type(msg['fn']).__name__} distribution has no finite support to "
                f"enumerate; remove infer={{'enumerate': ...}} there (continuous latents "
                f"belong in the guide, e.g. AutoNormal)."
            )
        self.requested.add(msg["name"])


class FixValues(Messenger):
    """Set the value of the named sample sites (they stay latent, not observed)."""

    def __init__(self, values: Mapping):
        super().__init__()
        if not isinstance(values, Mapping):
            raise TypeError(f"values must map site names to values, got {type(values).__name__}")
        self.values = values

    def _pyro_sample(self, msg):
        if msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]
            msg["done"] = True


class AsParallel(Messenger):
    """Treat ``infer={"enumerate": "sequential"}`` model sites as parallel ones."""

    def _pyro_sample(self, msg):
        if msg["infer"].get("enumerate") == "sequential" and not msg["is_observed"]:
            msg["infer"] = dict(msg["infer"], enumerate="parallel")
