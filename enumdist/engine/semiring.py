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

Each also owns its fused kernel for a whole first-order chain (``chain``: the chain's sum
over all paths per row, and a memo) and the matching backward choice (``chain_states``:
states ``[N, T]`` from that memo), so the contract stage never asks which semiring it holds.

Both are stateless; ``eliminate`` and ``choose`` are pure functions of their inputs (``choose``
of ``LogSum`` draws from torch's global RNG or the given generator).
"""

from __future__ import annotations

import torch

from enumdist.engine.chain.forward_backward import (
    batched_chain_log_likelihood,
    chain_log_likelihood,
)
from enumdist.engine.chain.sampling import batched_chain_sample, chain_sample, draw
from enumdist.engine.chain.viterbi import follow, viterbi


class Semiring:
    """Interface: ``eliminate(x, dims)`` and ``choose(logits)`` (last dim = the variable);
    ``chain(inputs)`` and ``chain_states(memo)`` for a fused chain
    (``inputs``: :class:`~enumdist.engine.chain.adapter.ChainInputs`)."""

    name = "abstract"

    def eliminate(self, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError

    def choose(self, logits: torch.Tensor, generator=None) -> torch.Tensor:
        raise NotImplementedError

    def chain(self, inputs) -> tuple[torch.Tensor, object]:
        """``(sum over all paths [N], memo for chain_states)``."""
        raise NotImplementedError

    def chain_states(self, memo, generator=None) -> torch.Tensor:
        """States ``[N, T]`` chosen backwards from a :meth:`chain` memo."""
        raise NotImplementedError


class LogSum(Semiring):
    """The log semiring: marginal likelihoods; exact posterior sampling on the way back."""

    name = "logsum"

    def eliminate(self, x, dims):
        return torch.logsumexp(x, dim=dims)

    def choose(self, logits, generator=None):
        return draw(logits.detach(), generator)

    def chain(self, inputs):
        """The fused forward-backward (shared transitions) or the per-sequence kernel; the memo
        is the detached inputs, for forward filtering backward sampling."""
        emissions, transitions = inputs.emissions, inputs.per_sequence_transitions()
        if transitions.dim() == 4:
            out = batched_chain_log_likelihood(emissions, transitions)
        else:
            out = chain_log_likelihood(
                emissions.new_zeros(emissions.shape[-1]), transitions, emissions
            )
        return out, (emissions.detach(), transitions.detach())

    def chain_states(self, memo, generator=None):
        emissions, transitions = memo
        if transitions.dim() == 4:
            return batched_chain_sample(emissions, transitions, generator)
        init = emissions.new_zeros(emissions.shape[-1])
        return chain_sample(init, transitions, emissions, generator=generator)


class MaxSum(Semiring):
    """The tropical (max, +) semiring: maximum a-posteriori values; arg-max on the way back."""

    name = "maxsum"

    def eliminate(self, x, dims):
        return torch.amax(x, dim=dims)

    def choose(self, logits, generator=None):
        return logits.detach().argmax(dim=-1)

    def chain(self, inputs):
        """Viterbi once; the memo is its final scores and back-pointers."""
        delta, pointers = viterbi(
            inputs.emissions.detach(), inputs.transitions.detach(), inputs.mask
        )
        return delta.amax(-1), (delta, pointers)

    def chain_states(self, memo, generator=None):
        delta, pointers = memo
        return follow(pointers, delta.argmax(-1))


LOG_SUM = LogSum()
MAX_SUM = MaxSum()


def for_temperature(temperature) -> Semiring:
    """``infer_discrete``'s temperature: 0 is MAP, 1 is sampling (as in Pyro)."""
    if temperature == 0:
        return MAX_SUM
    if temperature == 1:
        return LOG_SUM
    raise ValueError(f"temperature must be 0 (MAP) or 1 (posterior samples), got {temperature!r}")
