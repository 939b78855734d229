"""Semirings: what "sum" means when a variable is eliminated, and how it is undone.

Plated TVE in log space needs two operations. Taking a *product* of factors is addition of log
tensors, and a product over a plate is a sum over the plate dim; those never change. What
changes with the question asked is the *sum* over an eliminated variable, and the matching
backward *choice* that recovers a value for it once the variables it depended on are fixed:

===========  ====================  ================================  =======================
semiring     eliminate a variable  choose it again (backward pass)    serves
===========  ====================  ================================  =======================
LogSum       log-sum-exp           sample from the softmax            loss, marginals, samples
MaxSum       max                   arg-max                            MAP / Viterbi
===========  ====================  ================================  =======================

Both are stateless; ``eliminate`` and ``choose`` are pure functions of their inputs (``choose``
of ``LogSum`` draws from torch's global RNG or the given generator).
"""

from __future__ import annotations

import torch

from enumdist.engine.chain.sampling import draw


class Semiring:
    """Interface: ``eliminate(x, dims)`` and ``choose(logits)`` (last dim = the variable)."""

    name = "abstract"

    def eliminate(self, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError

    def choose(self, logits: torch.Tensor, generator=None) -> torch.Tensor:
        raise NotImplementedError


class LogSum(Semiring):
    """The log semiring: marginal likelihoods; exact posterior sampling on the way back."""

    name = "logsum"

    def eliminate(self, x, dims):
        return torch.logsumexp(x, dim=dims)

    def choose(self, logits, generator=None):
        return draw(logits.detach(), generator)


class MaxSum(Semiring):
    """The tropical (max, +) semiring: maximum a-posteriori values; arg-max on the way back."""

    name = "maxsum"

    def eliminate(self, x, dims):
        return torch.amax(x, dim=dims)

    def choose(self, logits, generator=None):
        return logits.detach().argmax(dim=-1)


LOG_SUM = LogSum()
MAX_SUM = MaxSum()


def for_temperature(temperature) -> Semiring:
    """``infer_discrete``'s temperature: 0 is MAP, 1 is sampling (as in Pyro)."""
    if temperature == 0:
        return MAX_SUM
    if temperature == 1:
        return LOG_SUM
    raise ValueError(f"temperature must be 0 (MAP) or 1 (posterior samples), got {temperature!r}")
