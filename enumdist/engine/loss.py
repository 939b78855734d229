"""Loss stage: the ELBO of an :class:`~enumdist.engine.trace.EnumProblem`.

``ELBO = E_q[ sum of costs + scale * log Z(enumerated factors) - log q ]``. The contraction of the
enumerated factors runs through the one elimination routine (``contract.py``) in the log
semiring; the expectation over the guide's own discrete choices uses DiCE weights (enumerated
guide sites weigh by ``q``; non-reparameterised sampled sites carry a score-function factor).
"""

from __future__ import annotations

import torch

from enumdist.engine.contract import contract, full_sum
from enumdist.engine.dice import expected_costs
from enumdist.engine.plan import plan_for, problem_sizes
from enumdist.engine.plates import LOCAL
from enumdist.engine.semiring import LOG_SUM


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
    """The (differentiable, surrogate) ELBO of one particle (one run of the guide)."""
    terms = elbo_terms(problem, plates, memory_budget)
    sizes = problem_sizes(problem)
    if problem.dice_factors or problem.dice_denominators:
        summed = expected_costs(
            terms,
            problem.dice_factors,
            problem.dice_denominators,
            sizes,
            problem.plates.keys(),
            memory_budget,
        )
    else:
        summed = [(full_sum(t, d, o, sizes), o) for t, d, o in terms]
    zero = _zero(problem)
    inside = sum((v for v, o in summed if plates.touches_shard(o)), zero)
    outside = sum((v for v, o in summed if not plates.touches_shard(o)), zero)
    return plates.sum_terms(outside, inside)


def _zero(problem):
    for group in (problem.log_factors, problem.costs, problem.guide_costs):
        for term in group:
            return term.factor.tensor.new_zeros(())
    return torch.zeros(())
