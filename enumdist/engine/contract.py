"""Contract stage: execute an elimination :class:`~enumdist.engine.plan.Plan`.

One routine, :func:`contract`, runs every plan. What it computes is set by two plug-ins:

* a :mod:`semiring <enumdist.engine.semiring>` -- how a variable is summed out (log-sum-exp for
  likelihoods and marginals, max for MAP);
* a *plate back end* (``plates.py``) -- how a product over a plate is taken: ``LOCAL`` sums the
  plate dim on this process; the sharded back end also adds the partial sums of the other ranks
  (all-reduce), which makes a plate split across processes exact.

A plan may also hold :class:`~enumdist.engine.steps.ChainStep` s -- runs of eliminations shaped
like a first-order chain -- which execute in one call to the fused kernels of ``engine/chain/``
(forward-backward with its own adjoint, Viterbi, forward-filtering backward-sampling) instead
of one autograd node per time step; and same-shaped lazy emission factors are reduced over
their plates in one batched einsum.

With ``tape=[]`` the forward pass records each product tensor (or a chain's inputs), and
:func:`backtrack` walks the tape backwards to choose a value for every eliminated variable.
"""

from __future__ import annotations

import math

import torch

from enumdist.engine.chain.adapter import Row, chain_decisions, run_chain
from enumdist.engine.factors import align, dense
from enumdist.engine.lazy import LazyBernoulliLogProb, stack
from enumdist.engine.plates import LOCAL
from enumdist.engine.steps import ChainStep, Plan, PlateStep, SumStep
from enumdist.engine.tape import ChainRecord, SumRecord


def contract(plan: Plan, tensors, semiring, plates=LOCAL, tape=None):
    """Run ``plan`` on input ``tensors`` (ordered as the plan's structure; tensors or lazy
    factors from ``lazy.py``, which a plate product can reduce without materialising).

    Returns the plan's output terms as ``(tensor, dims, ordinal)``; appends
    a :class:`~enumdist.engine.tape.SumRecord` or ``ChainRecord`` to ``tape`` for every
    eliminated variable or chain when a list is given.
    """
    slots = list(tensors) + [None] * (plan.num_slots - len(tensors))
    batched = _batch_lazy_plate_sums(plan.steps, slots, plates)
    for step in plan.steps:
        if step.out in batched:
            slots[step.out] = batched.pop(step.out)
            continue
        if isinstance(step, ChainStep):
            out = run_chain(step, slots, semiring, tape)
        elif isinstance(step, SumStep):
            x = None
            for slot, dims in zip(step.inputs, step.input_dims):
                term = slots[slot]
                term = term if torch.is_tensor(term) else term.tensor  # materialise lazy factors
                term = align(term, dims, step.all_dims)
                x = term if x is None else x + term
                if tape is None:
                    slots[slot] = None  # free intermediates as soon as they are used
            assert x is not None, f"sum step over {step.var!r} has no inputs"
            if tape is not None:
                tape.append(SumRecord(step, x))
            out = semiring.eliminate(x, (step.all_dims.index(step.var),))
        else:
            positions = tuple(step.input_dims.index(p) for p in step.plates)
            reduced = step.ordinal - step.target
            term = slots[step.input]
            term = term if isinstance(term, LazyBernoulliLogProb) else dense(term)
            out = plates.plate_sum(term, positions, step.absent_count, reduced, step.out_dims)
        slots[step.out] = out
    return [(dense(slots[slot]), dims, ordinal) for slot, dims, ordinal in plan.outputs]


def full_sum(tensor: torch.Tensor, dims, ordinal, sizes) -> torch.Tensor:
    """Sum of a term over all its dims, counting plates it broadcasts over."""
    missing = math.prod(sizes[p] for p in ordinal if p not in dims)
    total = tensor.sum()
    return total * missing if missing != 1 else total


def _batch_lazy_plate_sums(steps, slots, plates):
    """Reduce runs of plate steps over same-shaped lazy factors with one einsum per run.

    A python-loop HMM has one emission factor per time step; they share shapes, so their sums
    over the ``keys`` plate stack into a single batched contraction. Returns ``{out slot:
    tensor}`` for the steps computed this way.
    """
    groups: dict = {}
    for step in steps:
        if isinstance(step, PlateStep) and isinstance(slots[step.input], LazyBernoulliLogProb):
            key = (
                slots[step.input].signature(step.ordinal),
                step.plates,
                step.absent_count,
                step.ordinal - step.target,
            )
            groups.setdefault(key, []).append(step)
    results = {}
    for (_, present, absent, reduced), group in groups.items():
        if len(group) < 2:
            continue
        lazy = stack([slots[s.input] for s in group])
        positions = tuple(lazy.dims.index(p) for p in present)
        out_dims = tuple(d for d in lazy.dims if d not in present)  # leading dim: the stack
        total = plates.plate_sum(lazy, positions, absent, reduced, out_dims)
        for index, step in enumerate(group):
            results[step.out] = Row(total, index)
            slots[step.input] = None
    return results


def _with_plates(x, dims, plate_names, sizes):
    missing = [p for p in sorted(plate_names) if p not in dims]
    if not missing:
        return x, dims
    x = x.reshape(x.shape + (1,) * len(missing)).expand(x.shape + tuple(sizes[p] for p in missing))
    return x, dims + tuple(missing)


def backtrack(tape, semiring, sizes, plates=LOCAL, generator=None):
    """Choose every eliminated variable, last eliminated first.

    Returns ``{var: (index, dims)}`` where ``index`` is a LongTensor over the plates ``dims`` of
    the variable (one choice per plate element).
    """
    decided: dict[str, tuple[torch.Tensor, tuple[str, ...]]] = {}
    for record in reversed(tape):
        step = record.step
        if isinstance(record, ChainRecord):
            for var, value in chain_decisions(record, semiring, generator).items():
                decided[var] = (plates.broadcast_decision(value, step.plates), step.plates)
            continue
        x, dims = _with_plates(record.product.detach(), step.all_dims, step.ordinal, sizes)
        for other in [d for d in dims if d in decided]:
            index, index_dims = decided[other]
            axis = dims.index(other)
            index = align(index, index_dims, dims)
            index = index.expand(tuple(1 if d == other else s for d, s in zip(dims, x.shape)))
            x = x.gather(axis, index).squeeze(axis)
            dims = dims[:axis] + dims[axis + 1 :]
        axis = dims.index(step.var)
        out_dims = dims[:axis] + dims[axis + 1 :]
        value = semiring.choose(x.movedim(axis, -1), generator)
        decided[step.var] = (plates.broadcast_decision(value, out_dims), out_dims)
    return decided
