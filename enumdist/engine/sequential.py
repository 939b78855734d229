"""Model-side sequential enumeration (Pyro raises ``NotImplementedError`` for it).

A global discrete site marked ``infer={"enumerate": "sequential"}`` is enumerated by running the
model once per value of the site instead of adding a tensor dimension for it. Each run fixes the
site, eliminates everything else in parallel, and yields ``A_k``: the model's log-joint with the
site at value ``k``. Because the site is global, ``log sum_k exp(A_k)`` is exactly what parallel
enumeration computes -- while each run only allocates the factors for one value, so peak memory
drops by up to the site's support size.

Limits, each with a clear error: the site must be outside every plate (a plated site has one
value per plate element, which one run per value cannot represent), scales must be 1 (scaled
costs sit outside the log-sum-exp in ``TraceEnum_ELBO``), and the guide must be reparameterised
(no DiCE weights).
"""

from __future__ import annotations

import itertools

import torch

from enumdist.engine import loss as loss_stage
from enumdist.engine import trace as trace_stage
from enumdist.engine.contract import full_sum
from enumdist.engine.errors import EnumerationError
from enumdist.engine.handlers import FixValues
from enumdist.engine.plan import problem_sizes
from enumdist.engine.plates import LOCAL


def _supports(model_trace, names):
    supports = []
    for name in names:
        site = model_trace.nodes[name]
        plated = [f.name for f in site["cond_indep_stack"] if f.vectorized]
        if plated:
            raise EnumerationError(
                f"model site '{name}' asks for sequential enumeration inside plate(s) {plated}; "
                "sequential enumeration runs the model once per value, which only works for "
                "global sites. Use infer={'enumerate': 'parallel'} for it."
            )
        if not getattr(site["fn"], "has_enumerate_support", False):
            raise EnumerationError(
                f"model site '{name}' asks for enumeration but its {type(site['fn']).__name__} "
                "distribution has no finite support to enumerate."
            )
        values = site["fn"].enumerate_support(expand=False)
        supports.append([values[k] for k in range(values.shape[0])])
    return supports


def _check_unscaled(problem, names):
    for term in problem.log_factors + problem.costs:
        if not (isinstance(term.scale, (int, float)) and term.scale == 1):
            raise EnumerationError(
                f"sequential enumeration of {names} needs unscaled model sites, but site "
                f"'{term.name}' has poutine.scale {term.scale}; use parallel enumeration there."
            )
    if problem.dice_factors:
        raise EnumerationError(
            f"sequential enumeration of {names} needs a reparameterised guide without "
            "enumerated or score-function sites; use parallel enumeration there."
        )


class _LogSumExpOverRuns(torch.autograd.Function):
    """``log sum_k exp(run(k))`` keeping no run's graph: backward re-runs one value at a time.

    ``params`` are the leaf tensors the runs depend on; their gradient is
    ``sum_k softmax_k * d run(k) / d params``, accumulated run by run.
    """

    @staticmethod
    def forward(ctx, run, combinations, *params):
        with torch.no_grad():
            values = torch.stack([run(c) for c in combinations])
        ctx.run, ctx.combinations = run, combinations
        ctx.save_for_backward(values, *params)
        return torch.logsumexp(values, 0)

    @staticmethod
    def backward(ctx, grad):
        values, *params = ctx.saved_tensors
        weights = torch.softmax(values, 0) * grad
        totals = [torch.zeros_like(p) for p in params]
        for combination, weight in zip(ctx.combinations, weights):
            with torch.enable_grad():
                grads = torch.autograd.grad(ctx.run(combination), params, allow_unused=True)
            for total, g in zip(totals, grads):
                if g is not None:
                    total.add_(g * weight)
        return (None, None, *totals)


def sequential_elbo(
    trace_problem, model, guide, args, kwargs, names, traces, plates=LOCAL, memory_budget=None
):
    """The ELBO with the global sites ``names`` enumerated one value (combination) at a time.

    Peak memory is that of one run: the forward pass keeps only each run's scalar, and the
    backward pass re-runs the values one after another (same guide sample: the RNG state is
    restored before every run). ``trace_problem(model, guide, args, kwargs)`` traces one run
    into an :class:`EnumProblem`. ``plates`` is the call's plate back end: sharded, every run is
    the full-data one on every rank (each run is traced under ``plates.guarded``, so a failure
    on one rank stops all of them), and so is their log-sum-exp.
    """
    supports = _supports(traces[0], names)
    cpu_state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def problem_for(combination):
        def trace():
            torch.random.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
            fixed = FixValues(dict(zip(names, combination)))(model)
            problem = trace_problem(fixed, guide, args, kwargs)
            _check_unscaled(problem, names)
            return problem

        problem = plates.guarded(trace)
        plates.prepare(problem)
        return problem

    def run(combination):
        problem = problem_for(combination)
        problem.guide_costs = []  # the guide term is added once, below
        return loss_stage.elbo(problem, plates, memory_budget)

    combinations = list(itertools.product(*supports))
    first = problem_for(combinations[0])
    sizes = problem_sizes(first)
    guide_terms = {True: torch.zeros(()), False: torch.zeros(())}
    for t in first.guide_costs:
        inside = plates.touches_shard(t.ordinal)
        guide_terms[inside] = guide_terms[inside] - full_sum(
            t.factor.tensor * t.scale, t.factor.dims, t.ordinal, sizes
        )
    guide_part = plates.sum_terms(guide_terms[False], guide_terms[True])
    params = [
        p for p in trace_stage.trace_params(first.model_trace, first.guide_trace) if p.requires_grad
    ]
    del first
    return _LogSumExpOverRuns.apply(run, combinations, *params) + guide_part
