"""The problem the trace stage hands on: named factors, plates and enumerated variables.

Every later stage (plan, contract, loss, decoding, sharding) reads these records and nothing of
Pyro's numbered tensor layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pyro.poutine.trace_struct import Trace

from enumdist.engine.errors import EnumerationError
from enumdist.engine.factors import LogFactor


@dataclass(frozen=True)
class Plate:
    """A vectorised plate: its tensor dim, local size and full (pre-subsampling) size."""

    name: str
    dim: int
    size: int
    full_size: int


@dataclass
class EnumVar:
    """An enumerated discrete variable (one sample site)."""

    name: str
    size: int
    ordinal: frozenset[str]  # plate names the site lives in
    enum_dim: int  # Pyro's numbered dim for the variable at the time of the site
    support: torch.Tensor  # the site's enumerated value (Pyro layout)
    in_guide: bool
    event_dim: int = 0


@dataclass
class ModelTerm:
    """One model or guide site as a factor, with how the ELBO must treat it."""

    name: str
    factor: LogFactor  # a Factor, or a lazy one (lazy.py)
    ordinal: frozenset[str]
    scale: float | torch.Tensor = 1.0  # float or scalar tensor; applied outside the log-sum-exp


@dataclass
class EnumProblem:
    """Everything downstream stages need, in names rather than numbered dims."""

    plates: dict[str, Plate]
    vars: dict[str, EnumVar]
    log_factors: list[ModelTerm] = field(default_factory=list)  # enter the elimination
    costs: list[ModelTerm] = field(default_factory=list)  # plain expected costs (sign: +log p)
    guide_costs: list[ModelTerm] = field(default_factory=list)  # -log q terms
    dice_factors: list[ModelTerm] = field(default_factory=list)  # guide weights (see dice.py)
    # ordinal -> log number of sequential runs of the guide's sites there (see guide_enum.py)
    dice_denominators: dict[frozenset[str], torch.Tensor | float] = field(default_factory=dict)
    model_trace: Trace | None = None
    guide_trace: Trace | None = None

    @property
    def sum_vars(self) -> frozenset[str]:
        return frozenset(n for n, v in self.vars.items() if not v.in_guide)

    def common_scale(self) -> float | torch.Tensor:
        """The scale shared by all factors in the elimination (Pyro requires one)."""
        scales = {}
        for term in self.log_factors:
            scale = term.scale
            if isinstance(scale, torch.Tensor) and scale.dim():
                raise EnumerationError(
                    f"site '{term.name}': enumeration supports only a scalar poutine.scale "
                    f"(got a tensor of shape {tuple(scale.shape)}); use poutine.mask for "
                    f"per-element weights."
                )
            scales.setdefault(float(scale), (term.name, scale))
        if len(scales) > 1:
            listing = ", ".join(f"'{n}' x{v:g}" for v, (n, _) in scales.items())
            raise EnumerationError(
                "Expected all enumerated sample sites to share a common poutine.scale: the "
                "model-enumerated sites and the sites depending on them must share one "
                f"poutine.scale, but found {listing}. A subsampled plate under a global "
                "enumerated variable causes this: don't subsample that plate, or shard it with "
                "EnumELBO(shard_plates=[...]) instead."
            )
        return next(iter(scales.values()))[1] if scales else 1.0
