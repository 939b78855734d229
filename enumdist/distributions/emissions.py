"""``log p(y_t | x_t = s)`` for every step and state: ``[..., T, S]``, with fast rules.

The generic way (Pyro's) broadcasts ``value [..., T, 1, *event]`` against an observation
distribution batched over states, which for ``Bernoulli(probs [S, K]).to_event(1)`` builds and
differentiates an ``[N, T, S, K]`` tensor: most of a step's time on the chorales. A rule
registered here computes the same numbers in a cheaper way (one matmul); where no rule applies,
or a rule declines (returns ``None``), the generic way is used.
"""

from __future__ import annotations

import torch
from torch.distributions import Bernoulli, Independent

_RULES: dict = {}


def register(*types):
    """Register ``rule(dist, value) -> Tensor | None`` for distributions of exactly ``types``."""

    def decorate(rule):
        for t in types:
            _RULES[t] = rule
        return rule

    return decorate


def observation_log_probs(observation_dist, value):
    """``observation_dist.log_prob(value.unsqueeze(-1 - event_dim))``: ``[..., T', S]``."""
    rule = _RULES.get(type(observation_dist))
    out = None if rule is None else rule(observation_dist, value)
    if out is None:
        out = observation_dist.log_prob(value.unsqueeze(-1 - observation_dist.event_dim))
    return out


def _independent_types():
    import pyro.distributions as pd

    return Independent, pd.Independent


@register(*_independent_types())
def _independent_bernoulli_keys(obs, value):
    """``Bernoulli(logits [S, K]).to_event(1)``: ``y @ l^T - sum_k softplus(l)``, exactly the
    terms of ``-binary_cross_entropy_with_logits`` (a matmul instead of ``[..., T, S, K]``)."""
    base = obs.base_dist
    if not isinstance(base, Bernoulli) or obs.reinterpreted_batch_ndims != 1:
        return None
    logits = base.logits
    if logits.dim() != 2 or value.shape[-1:] != logits.shape[-1:] or value.dim() < 2:
        return None
    # softplus without F.softplus's linear cut-off (20), with the right gradient at 0
    softplus = -torch.nn.functional.logsigmoid(-logits)
    return value.to(logits.dtype) @ logits.T - softplus.sum(-1)
