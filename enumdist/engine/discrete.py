"""``infer_discrete``: a drop-in for ``pyro.infer.infer_discrete`` -- MAP or posterior samples.

The model is traced under parallel enumeration, its factors are eliminated by the one routine
in ``contract.py`` (max-sum for temperature 0, log-sum for 1) while the product tensors are
recorded, and a backward pass chooses every variable given those eliminated after it: Viterbi
and forward-filtering backward-sampling on chains, exact on any plated tree. Like Pyro, it uses
masked, unscaled log-probabilities. The returned function runs the model with the chosen values.
"""

from __future__ import annotations

import functools
import math
import warnings

import pyro.poutine as poutine
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.util import ignore_jit_warnings

from enumdist.engine import trace as trace_stage
from enumdist.engine.contract import backtrack, contract
from enumdist.engine.errors import EnumerationError
from enumdist.engine.handlers import AsParallel, EnumRequests, FixValues
from enumdist.engine.layout import to_pyro_layout
from enumdist.engine.memory import DECODE, default_memory_budget
from enumdist.engine.plan import plan_for, problem_sizes
from enumdist.engine.plates import LOCAL, plates_for
from enumdist.engine.semiring import LOG_SUM, for_temperature


def guess_first_available_dim(model, args, kwargs) -> int:
    """One dim left of the deepest plate the model uses (as Pyro's guess does)."""
    with poutine.block():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    dims = [
        f.dim
        for s in trace.nodes.values()
        if s["type"] == "sample"
        for f in s["cond_indep_stack"]
        if f.vectorized
    ]
    return min(dims, default=0) - 1


def value_of(var, index, dims, plates):
    """The support value at the chosen ``index`` (over plates ``dims``) in Pyro's layout."""
    support = var.support
    event_shape = tuple(support.shape[support.dim() - var.event_dim :]) if var.event_dim else ()
    if support.numel() != var.size * math.prod(event_shape):
        raise EnumerationError(
            f"site '{var.name}' enumerates a support that varies across its batch "
            "(infer={'expand': True}); infer_discrete needs expand=False there."
        )
    table = support.reshape((var.size, *event_shape))
    return to_pyro_layout(table[index], dims, plates, trailing=len(event_shape))


def decode_problem(problem, semiring, plates=LOCAL, memory_budget=None) -> dict:
    """``{site: value}`` for every enumerated variable of a traced problem: eliminate with
    ``semiring`` while recording the products, then choose backwards (MAP or a joint sample)."""
    if not problem.vars:
        return {}
    with ignore_jit_warnings():
        tape: list = []
        plan = plan_for(problem, problem.log_factors, memory_budget, DECODE)
        contract(plan, [t.factor.data for t in problem.log_factors], semiring, plates, tape)
        decided = backtrack(tape, semiring, problem_sizes(problem), plates)
        return {
            name: value_of(problem.vars[name], decided[name][0], decided[name][1], problem.plates)
            for name in problem.vars
        }


def decode(
    model,
    args,
    kwargs,
    first_available_dim,
    temperature,
    plates=LOCAL,
    memory_budget=None,
    strict_enumeration_warning=True,
):
    """``{site: value}`` for every enumerated model site (MAP or one posterior sample).

    Under ``torch.jit.trace`` the engine's shape bookkeeping (sizes read as Python ints, as in
    Pyro's own internals) raises no TracerWarning; the model's own code still may.
    """
    semiring = for_temperature(temperature)
    if first_available_dim is None:
        first_available_dim = guess_first_available_dim(model, args, kwargs)
    max_plate_nesting = -1 - first_available_dim
    enum = EnumMessenger(first_available_dim=first_available_dim)

    def trace():
        requests = EnumRequests(first_available_dim, "model")
        model_trace = poutine.trace(enum(AsParallel()(requests(model)))).get_trace(*args, **kwargs)
        with ignore_jit_warnings():
            return trace_stage.build_problem(
                model_trace,
                poutine.Trace(),
                max_plate_nesting,
                validate=True,
                mask_enumerated=True,
                memory_budget=memory_budget,
            )

    problem = plates.guarded(trace)
    plates.prepare(problem)
    if not problem.vars and strict_enumeration_warning:  # as Pyro's, whatever the validation
        warnings.warn(
            "infer_discrete found no sample sites configured for enumeration. Mark discrete "
            "sites infer={'enumerate': 'parallel'} (or @config_enumerate); the model then runs "
            "unchanged.",
            stacklevel=2,
        )
    with ignore_jit_warnings():
        return decode_problem(problem, semiring, plates, memory_budget)


def sample_posterior(trace_problem, model, args, kwargs, plates=LOCAL, memory_budget=None):
    """``TraceEnum_ELBO.sample_posterior``: one joint posterior draw of the model-enumerated
    sites given the observations and a guide draw, by backward sampling; then ``model`` runs,
    replayed against that guide draw and with those sites set, and its return value is
    returned. ``trace_problem()`` traces the problem as the ELBO sees it (enumerated sites
    unmasked, as ``TraceEnum_ELBO`` has them)."""
    problem = plates.guarded(trace_problem)
    plates.prepare(problem)
    if any(v.in_guide for v in problem.vars.values()):  # callers refuse these when tracing
        raise NotImplementedError("sample_posterior() is not compatible with guide enumeration")
    values = decode_problem(problem, LOG_SUM, plates, memory_budget)
    program = FixValues(values)(model)
    if any(site["type"] == "sample" for site in problem.guide_trace.nodes.values()):
        program = poutine.replay(program, trace=problem.guide_trace)
    return program(*args, **kwargs)


def infer_discrete(
    fn=None,
    first_available_dim=None,
    temperature=1,
    *,
    shard_plates=(),
    process_group=None,
    strict_enumeration_warning=True,
    memory_budget=None,
):
    """Pyro's ``infer_discrete`` contract: a function that runs ``fn`` with its enumerated sites
    set to their MAP values (``temperature=0``) or to a joint posterior sample (``1``).

    ``shard_plates``: with ``torch.distributed`` initialised, each rank passes its own slice of
    these plates; local variables are decoded per rank, global ones agree on every rank (on one
    process the plates must still exist). ``memory_budget``: bytes; a decoding whose estimated
    peak is larger is refused before it allocates (default: half the physical memory).
    """
    if fn is None:
        return functools.partial(
            infer_discrete,
            first_available_dim=first_available_dim,
            temperature=temperature,
            shard_plates=shard_plates,
            process_group=process_group,
            strict_enumeration_warning=strict_enumeration_warning,
            memory_budget=memory_budget,
        )
    for_temperature(temperature)  # fail early on a bad temperature
    budget = default_memory_budget() if memory_budget is None else memory_budget

    @functools.wraps(fn)
    def decoded(*args, **kwargs):
        plates = plates_for(shard_plates, process_group)
        with poutine.block():  # the decoding runs are not part of the caller's trace
            values = decode(
                fn,
                args,
                kwargs,
                first_available_dim,
                temperature,
                plates,
                budget,
                strict_enumeration_warning,
            )
        return FixValues(values)(fn)(*args, **kwargs)

    return decoded
