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
from enumdist.engine.contract import LOCAL, backtrack, contract
from enumdist.engine.errors import EnumerationError
from enumdist.engine.layout import to_pyro_layout
from enumdist.engine.loss import plan_for, problem_sizes
from enumdist.engine.semiring import for_temperature
from enumdist.engine.sequential import AsParallel, FixValues


def guess_first_available_dim(model, args, kwargs) -> int:
    """One dim left of the deepest plate the model uses (as Pyro's guess does)."""
    with poutine.block():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    dims = [f.dim for s in trace.nodes.values() if s["type"] == "sample"
            for f in s["cond_indep_stack"] if f.vectorized]
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
    table = support.reshape((var.size,) + event_shape)
    return to_pyro_layout(table[index], dims, plates, trailing=len(event_shape))


def decode(model, args, kwargs, first_available_dim, temperature, plates=LOCAL,
           strict_enumeration_warning=True):
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
        requests = trace_stage.EnumRequests(first_available_dim, "model")
        model_trace = poutine.trace(enum(AsParallel()(requests(model)))).get_trace(*args, **kwargs)
        with ignore_jit_warnings():
            problem = trace_stage.build_problem(
                model_trace, poutine.Trace(), max_plate_nesting, validate=True,
                mask_enumerated=True
            )
        return problem

    problem = plates.guarded(trace)
    plates.prepare(problem)
    if not problem.vars:
        if strict_enumeration_warning:  # as Pyro's infer_discrete: whatever the validation
            warnings.warn(
                "infer_discrete found no sample sites configured for enumeration. Mark discrete "
                "sites infer={'enumerate': 'parallel'} (or @config_enumerate); the model then "
                "runs unchanged."
            )
        return {}
    with ignore_jit_warnings():
        return _decode_problem(problem, semiring, plates)


def _decode_problem(problem, semiring, plates):
    tape = []
    plan = plan_for(problem, problem.log_factors)
    contract(plan, [t.factor.data for t in problem.log_factors], semiring, plates, tape)
    decided = backtrack(tape, semiring, problem_sizes(problem), plates)
    return {
        name: value_of(problem.vars[name], *decided[name], problem.plates)
        for name in problem.vars
    }


def infer_discrete(fn=None, first_available_dim=None, temperature=1, *,
                   shard_plates=(), process_group=None, strict_enumeration_warning=True):
    """Pyro's ``infer_discrete`` contract: a function that runs ``fn`` with its enumerated sites
    set to their MAP values (``temperature=0``) or to a joint posterior sample (``1``).

    ``shard_plates``: with ``torch.distributed`` initialised, each rank passes its own slice of
    these plates; local variables are decoded per rank, global ones agree on every rank.
    """
    if fn is None:
        return functools.partial(
            infer_discrete, first_available_dim=first_available_dim, temperature=temperature,
            shard_plates=shard_plates, process_group=process_group,
            strict_enumeration_warning=strict_enumeration_warning,
        )
    for_temperature(temperature)  # fail early on a bad temperature

    @functools.wraps(fn)
    def decoded(*args, **kwargs):
        plates = LOCAL
        if shard_plates:
            from enumdist.engine.sharding import ShardedPlates, single_process

            if not single_process(process_group):
                plates = ShardedPlates(shard_plates, process_group)
        with poutine.block():  # the decoding runs are not part of the caller's trace
            values = decode(fn, args, kwargs, first_available_dim, temperature, plates,
                            strict_enumeration_warning)
        return FixValues(values)(fn)(*args, **kwargs)

    return decoded
