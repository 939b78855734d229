"""Exact posterior marginals of every model-enumerated site, by differentiating ``log Z``.

``d log Z / d log f(x)`` is the posterior probability of the configuration ``x`` of factor
``f``'s variables (per plate element), so one backward pass through the log-semiring contraction
yields every marginal -- forward-backward on chains -- and it is exact wherever the elimination
is, including global and local enumerated variables that interact (Pyro issue #1460).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import pyro.distributions as dist

from enumdist.engine import trace as trace_stage
from enumdist.engine.contract import LOCAL, contract
from enumdist.engine.factors import expand_plates
from enumdist.engine.layout import to_pyro_layout
from enumdist.engine.loss import full_sum, plan_for, problem_sizes
from enumdist.engine.semiring import LOG_SUM
from enumdist.engine.sequential import AsParallel


def compute_marginals(elbo, model, guide, args, kwargs, plates=LOCAL):
    """``{site: Categorical}`` with ``probs`` shaped ``plate batch dims + (support size,)``."""
    traces = trace_stage.run_traces(AsParallel()(model), guide, args, kwargs,
                                    elbo.max_plate_nesting)
    problem = elbo.trace_problem(model, guide, args, kwargs, traces)
    plates.prepare(problem)
    if any(v.in_guide for v in problem.vars.values()):
        raise NotImplementedError("compute_marginals() does not support guide-side enumeration")
    # Each leaf carries all its plates: d log Z / d leaf is then a per-element posterior.
    for term in problem.log_factors:
        term.factor = expand_plates(term.factor, {p: problem.plates[p].size for p in term.ordinal})
    leaves = [t.factor.tensor.detach().contiguous().requires_grad_() for t in problem.log_factors]
    plan = plan_for(problem, problem.log_factors, elbo.memory_budget)
    sizes = problem_sizes(problem)
    with torch.enable_grad():
        outputs = contract(plan, leaves, LOG_SUM, plates)
        log_z = sum(full_sum(t, d, o, sizes) for t, d, o in outputs)
        grads = torch.autograd.grad(log_z, leaves, allow_unused=True)
    own = {t.name: (g, t.factor.dims) for t, g in zip(problem.log_factors, grads)}
    marginals = OrderedDict()
    for name, var in problem.vars.items():
        grad, dims = own[name]
        keep = [d for d in dims if d == name or d in problem.plates]
        probs = grad.sum(dim=[i for i, d in enumerate(dims) if d not in keep]) if len(keep) < len(
            dims) else grad
        kept = tuple(d for d in dims if d in keep)
        plate_dims = tuple(d for d in kept if d != name)
        probs = probs.movedim(kept.index(name), -1)
        probs = to_pyro_layout(probs, plate_dims, problem.plates, trailing=1)
        marginals[name] = dist.Categorical(probs=probs.detach())
    return marginals
