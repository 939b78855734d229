"""Loss stage: the ELBO of an :class:`~enumdist.engine.trace.EnumProblem`.

``ELBO = E_q[ sum of costs + scale * log Z(enumerated factors) - log q ]``. The contraction of the
enumerated factors runs through the one elimination routine (``contract.py``) in the log
semiring; the expectation over the guide's own discrete choices uses DiCE weights (enumerated
guide sites weigh by ``q``; non-reparameterised sampled sites carry a score-function factor).
"""

from __future__ import annotations

import math

import torch

from enumdist.engine.contract import contract
from enumdist.engine.factors import align
from enumdist.engine.plan import plan_for, problem_sizes  # noqa: F401 - re-exported
from enumdist.engine.plates import LOCAL
from enumdist.engine.semiring import LOG_SUM


def full_sum(tensor: torch.Tensor, dims, ordinal, sizes) -> torch.Tensor:
    """Sum of a term over all its dims, counting plates it broadcasts over."""
    missing = math.prod(sizes[p] for p in ordinal if p not in dims)
    total = tensor.sum()
    return total * missing if missing != 1 else total


def contracted_terms(problem, plates=LOCAL, memory_budget=None):
    """Eliminate the model's enumerated variables; returns ``[(tensor, dims, ordinal)]``."""
    if not problem.log_factors:
        return []
    plan = plan_for(problem, problem.log_factors, memory_budget)
    tensors = [t.factor.data for t in problem.log_factors]
    return contract(plan, tensors, LOG_SUM, plates)


def elbo_terms(problem, plates=LOCAL, memory_budget=None):
    """All ELBO summands as ``(tensor, dims, ordinal)``, already scaled and signed."""
    terms = []
    for cost in problem.costs:
        terms.append((cost.factor.tensor * cost.scale, cost.factor.dims, cost.ordinal))
    scale = problem.common_scale()
    for tensor, dims, ordinal in contracted_terms(problem, plates, memory_budget):
        terms.append((tensor * scale if not _is_one(scale) else tensor, dims, ordinal))
    for q in problem.guide_costs:
        terms.append((-(q.factor.tensor * q.scale), q.factor.dims, q.ordinal))
    return terms


def _is_one(scale) -> bool:
    return not isinstance(scale, torch.Tensor) and scale == 1


def elbo(problem, plates=LOCAL, memory_budget=None) -> torch.Tensor:
    """The (differentiable, surrogate) ELBO of one particle."""
    terms = elbo_terms(problem, plates, memory_budget)
    sizes = problem_sizes(problem)
    zero = _zero(problem)
    # Terms inside a sharded plate hold this rank's items only; the plate back end adds the
    # other ranks' (terms outside it are the same on every rank). An expectation is linear in
    # its terms, so the DiCE path splits the same way.
    inside = [t for t in terms if plates.touches_shard(t[2])]
    outside = [t for t in terms if not plates.touches_shard(t[2])]
    if problem.dice_factors:
        def total(group):
            value = dice_expectation(group, problem.dice_factors, sizes) if group else None
            return zero if value is None else value
    else:
        def total(group):
            return sum((full_sum(t, d, o, sizes) for t, d, o in group), zero)
    return plates.sum_terms(total(outside), total(inside))


def _zero(problem):
    for group in (problem.log_factors, problem.costs, problem.guide_costs):
        for term in group:
            return term.factor.tensor.new_zeros(())
    return torch.zeros(())


def dice_expectation(terms, dice_factors, sizes) -> torch.Tensor:
    """``sum_t E[cost_t]`` with each cost weighted by the DiCE factors of its upstream sites.

    A cost at ordinal ``t`` depends on the guide's stochastic sites whose plates are a subset of
    ``t`` (Pyro's coarse dependency rule). Their log-weights are added, exponentiated and
    multiplied into the cost; entries of zero probability are dropped so that ``0 * -inf`` does
    not poison the sum.
    """
    total = None
    for tensor, dims, ordinal in terms:
        weights = [w for w in dice_factors if w.ordinal <= ordinal]
        all_dims = dict.fromkeys(dims)
        for w in weights:
            all_dims.update(dict.fromkeys(w.factor.dims))
        all_dims.update(dict.fromkeys(sorted(p for p in ordinal if p not in all_dims)))
        target = tuple(all_dims)
        shape = tuple(sizes[d] for d in target)
        cost = align(tensor, dims, target).expand(shape)
        if weights:
            log_w = sum(align(w.factor.tensor, w.factor.dims, target) for w in weights)
            prob = log_w.exp().expand(shape)
            cost = torch.where(prob > 0, cost * prob, cost.new_zeros(()))
        value = cost.sum()
        total = value if total is None else total + value
    return total
