"""Exact posterior marginals of every model-enumerated site, by differentiating ``log Z``.

``d log Z / d log f(x)`` is the posterior probability of the configuration ``x`` of factor
``f``'s variables (per plate element), so one backward pass through the log-semiring contraction
yields every marginal -- forward-backward on chains -- and it is exact wherever the elimination
is, including global and local enumerated variables that interact (Pyro issue #1460).

Sharded, the plate back end must differentiate the all-reduce as the plain sum it is (adjoint
``"own"``, see :func:`enumdist.engine.plates.plates_for`): every rank computes the same full-data
``log Z``, and the derivative with respect to this rank's own factors is its own upstream
gradient -- summing the ranks' gradients, as training does, would count it once per rank.
"""

from __future__ import annotations

from collections import OrderedDict

import pyro.distributions as dist
import torch

from enumdist.engine.contract import contract, full_sum
from enumdist.engine.factors import expand_plates
from enumdist.engine.layout import to_pyro_layout
from enumdist.engine.memory import MARGINALS
from enumdist.engine.plan import plan_for, problem_sizes
from enumdist.engine.semiring import LOG_SUM


def refuse_guide_enumeration(guide_trace, method: str) -> None:
    """Pyro's posterior queries condition on one guide draw: a guide that enumerates (in
    parallel or one value at a time) has none, so they refuse it, as ``TraceEnum_ELBO`` does."""
    enumerated = sorted(
        name
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and site["infer"].get("enumerate")
    )
    if enumerated:
        raise NotImplementedError(
            f"{method}() is not compatible with guide enumeration (guide sites {enumerated} "
            "are enumerated); sample them in the guide, or enumerate them in the model."
        )


def marginal_distribution(fn, probs: torch.Tensor):
    """The posterior over a site's support as the site's own distribution type, as Pyro does:
    ``Bernoulli`` and ``OneHotCategorical`` sites get their own kind; any other enumerable
    site a ``Categorical`` over the indices of its (enumerated) support."""
    if isinstance(fn, dist.Bernoulli):
        return dist.Bernoulli(probs=probs[..., 1])
    if isinstance(fn, dist.OneHotCategorical):
        return dist.OneHotCategorical(probs=probs)
    return dist.Categorical(probs=probs)


def compute_marginals(trace_problem, plates, memory_budget=None):
    """``{site: distribution}`` of every model-enumerated site; batch shape: the site's plates.

    ``trace_problem()`` traces the model (and guide) into an :class:`EnumProblem`; ``plates``
    is the call's plate back end (sharded: adjoint ``"own"``). A model with nothing enumerated
    has no marginals: ``{}``.
    """
    problem = plates.guarded(trace_problem)
    plates.prepare(problem)
    if any(v.in_guide for v in problem.vars.values()):  # callers refuse these when tracing
        raise NotImplementedError("compute_marginals() is not compatible with guide enumeration")
    marginals = OrderedDict()
    if not problem.vars:
        return marginals
    # Each leaf carries all its plates: d log Z / d leaf is then a per-element posterior.
    for term in problem.log_factors:  # views: materialised below, once the plan is admitted
        term.factor = expand_plates(term.factor, {p: problem.plates[p].size for p in term.ordinal})
    plan = plan_for(problem, problem.log_factors, memory_budget, MARGINALS, expanded_inputs=True)
    leaves = [t.factor.tensor.detach().contiguous().requires_grad_() for t in problem.log_factors]
    sizes = problem_sizes(problem)
    with torch.enable_grad():
        outputs = contract(plan, leaves, LOG_SUM, plates)
        zero = leaves[0].new_zeros(())
        inside = sum(
            (full_sum(t, d, o, sizes) for t, d, o in outputs if plates.touches_shard(o)), zero
        )
        outside = sum(
            (full_sum(t, d, o, sizes) for t, d, o in outputs if not plates.touches_shard(o)), zero
        )
        log_z = plates.sum_terms(outside, inside)
        grads = torch.autograd.grad(log_z, leaves, allow_unused=True)
    own = {t.name: (g, t.factor.dims) for t, g in zip(problem.log_factors, grads)}
    for name in problem.vars:
        grad, dims = own[name]
        keep = [i for i, d in enumerate(dims) if d == name or d in problem.plates]
        others = [i for i in range(len(dims)) if i not in keep]
        probs = grad.sum(dim=others) if others else grad
        kept = tuple(dims[i] for i in keep)
        plate_dims = tuple(d for d in kept if d != name)
        probs = probs.movedim(kept.index(name), -1)
        probs = to_pyro_layout(probs, plate_dims, problem.plates, trailing=1)
        site = problem.model_trace.nodes[name]
        marginals[name] = marginal_distribution(site["fn"], probs.detach())
    return marginals
