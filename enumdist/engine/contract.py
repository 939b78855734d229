"""Contract stage: execute an elimination :class:`~enumdist.engine.plan.Plan`.

One routine, :func:`contract`, runs every plan. What it computes is set by two plug-ins:

* a :mod:`semiring <enumdist.engine.semiring>` -- how a variable is summed out (log-sum-exp for
  likelihoods and marginals, max for MAP);
* a *plate back end* (``plates.py``) -- how a product over a plate is taken: ``LOCAL`` sums the
  plate dim on this process; the sharded back end also adds the partial sums of the other ranks
  (all-reduce), which makes a plate split across processes exact.

A plan may also hold :class:`~enumdist.engine.plan.ChainStep` s -- runs of eliminations shaped
like a first-order chain -- which execute in one call to the fused kernels of ``chain.py``
(forward-backward with its own adjoint, Viterbi, forward-filtering backward-sampling) instead
of one autograd node per time step; and same-shaped lazy emission factors are reduced over
their plates in one batched einsum.

With ``tape=[]`` the forward pass records each product tensor (or a chain's inputs), and
:func:`backtrack` walks the tape backwards to choose a value for every eliminated variable.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from enumdist.engine.factors import align
from enumdist.engine.lazy import STACK, CategoricalTable, LazyBernoulliLogProb, log_tables, stack
from enumdist.engine.plan import ChainStep, Plan, PlateStep, SumStep
from enumdist.engine.plates import LOCAL




def contract(plan: Plan, tensors, semiring, plates=LOCAL, tape=None):
    """Run ``plan`` on input ``tensors`` (ordered as the plan's structure; tensors or lazy
    factors from ``lazy.py``, which a plate product can reduce without materialising).

    Returns the plan's output terms as ``(tensor, dims, ordinal)``; appends ``(step, product)``
    to ``tape`` for every eliminated variable when a list is given.
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
            if tape is not None:
                tape.append((step, x))
            out = semiring.eliminate(x, (step.all_dims.index(step.var),))
        else:
            positions = tuple(step.input_dims.index(p) for p in step.plates)
            reduced = step.ordinal - step.target
            term = slots[step.input]
            term = term if isinstance(term, LazyBernoulliLogProb) else _dense(term)
            out = plates.plate_sum(term, positions, step.absent_count, reduced, step.out_dims)
        slots[step.out] = out
    return [(_dense(slots[slot]), dims, ordinal) for slot, dims, ordinal in plan.outputs]


def _batch_lazy_plate_sums(steps, slots, plates):
    """Reduce runs of plate steps over same-shaped lazy factors with one einsum per run.

    A python-loop HMM has one emission factor per time step; they share shapes, so their sums
    over the ``keys`` plate stack into a single batched contraction. Returns ``{out slot:
    tensor}`` for the steps computed this way.
    """
    groups: dict = {}
    for step in steps:
        if isinstance(step, PlateStep) and isinstance(slots[step.input], LazyBernoulliLogProb):
            key = (slots[step.input].signature(step.ordinal), step.plates, step.absent_count,
                   step.ordinal - step.target)
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


class Row:
    """Row ``index`` of a batched result: a chain reads consecutive rows as one slice."""

    def __init__(self, stack: torch.Tensor, index: int):
        self.stack, self.index = stack, index

    @property
    def tensor(self) -> torch.Tensor:
        return self.stack[self.index]


def _dense(term):
    return term if torch.is_tensor(term) else term.tensor


def _shape(term) -> tuple:
    """A slot's shape without materialising it."""
    if torch.is_tensor(term):
        return tuple(term.shape)
    if isinstance(term, Row):
        return tuple(term.stack.shape[1:])
    return tuple(term.sizes[d] for d in term.dims)


def _chain_emissions(step, slots, num_states, plate_sizes):
    """The chain's unary terms stacked ``[T, *plates, S]`` (each step's dims ``(v_t, plates)``).

    When every step has one row of the same batched emission sum, in order (a python-loop HMM),
    that batch is sliced instead of split into rows and stacked again; other unary terms (the
    initial state's) are added to their steps.
    """
    shape = tuple(plate_sizes[p] for p in step.plates) + (num_states,)
    rows = [[(slots[slot], dims) for slot, dims in units if isinstance(slots[slot], Row)]
            for units in step.unary]
    first = rows[0][0][0] if rows[0] else None
    if first is not None and all(
        len(r) == 1 and r[0][0].stack is first.stack and r[0][0].index == first.index + t
        for t, r in enumerate(rows)
    ):
        dims = rows[0][0][1]
        batch = first.stack[first.index : first.index + len(step.vars)]
        batch = align(batch, (STACK,) + dims, (STACK,) + step.plates + (step.vars[0],))
        emissions = batch.expand((len(step.vars),) + shape)
        extra_steps, extras = [], []
        for t, (var, units) in enumerate(zip(step.vars, step.unary)):
            others = [(slots[s], d) for s, d in units if not isinstance(slots[s], Row)]
            if others:
                target = step.plates + (var,)
                extra_steps.append(t)
                extras.append(sum(align(_dense(x), d, target) for x, d in others).expand(shape))
        if extras:
            index = torch.tensor(extra_steps, device=emissions.device)
            emissions = emissions.index_add(0, index, torch.stack(extras))
        return emissions
    totals = [sum(align(_dense(slots[slot]), dims, step.plates + (var,)) for slot, dims in units)
              if units else None for var, units in zip(step.vars, step.unary)]
    like = next(t for t in totals if t is not None)
    zero = like.new_zeros(())  # a step with no unary term (nothing observed there)
    return torch.stack([(zero if t is None else t).expand(shape) for t in totals], 0)


def _renamed(table, pair):
    """``table`` over the chain pair ``(v_t, v_t+1)`` with those dims renamed prev / next."""
    names = {pair[0]: "prev", pair[1]: "next"}
    return CategoricalTable(table.param, tuple(names[d] for d in table.param_dims),
                            table.is_logits)


def _with_unused_first_step(transitions: torch.Tensor) -> torch.Tensor:
    """Prepend the (unused, zero) transition into step 0: the kernels index them by step."""
    return torch.cat([transitions.new_zeros((1,) + transitions.shape[1:]), transitions])


class MaskedTransitions(NamedTuple):
    """Per-sequence transitions that are one shared table where ``mask`` holds and zero (no
    constraint) elsewhere: ``infer_discrete`` masks the enumerated sites of padded steps."""

    table: torch.Tensor  # [T, S, S]
    mask: torch.Tensor  # [N, T] bool

    def dense(self) -> torch.Tensor:
        """``[N, T, S, S]``."""
        return torch.where(self.mask[..., None, None], self.table, self.table.new_zeros(()))


def _masked_transitions(step, pairs, plate_shape):
    """:class:`MaskedTransitions` when every pairwise factor is a table over its pair with a
    mask over the chain's plates only; else None."""
    if not all(isinstance(p, CategoricalTable) and p.mask is not None
               and p.is_logits == pairs[0].is_logits
               and set(p.mask.dims) <= set(step.plates) for p in pairs):
        return None
    if any(set(p.param_dims) != set(step.vars[t : t + 2]) for t, p in enumerate(pairs)):
        return None
    table = log_tables([_renamed(p, step.vars[t : t + 2]) for t, p in enumerate(pairs)],
                       ("prev", "next"))
    masks = [align(p.mask.tensor, p.mask.dims, step.plates) for p in pairs]
    num_plate_elements = math.prod(plate_shape)
    mask = torch.stack([m.expand(plate_shape).reshape(num_plate_elements) for m in masks], 1)
    return MaskedTransitions(_with_unused_first_step(table),
                             torch.cat([mask.new_ones(num_plate_elements, 1), mask], 1))


def chain_inputs(step, slots):
    """Stack a chain's factors: emissions ``[N, T, S]`` and transitions ``[T, S, S]``."""
    num_states = None
    plate_sizes = {}
    for units in step.unary:
        for slot, dims in units:
            sizes = dict(zip(dims, _shape(slots[slot])))
            plate_sizes.update({d: n for d, n in sizes.items() if d in step.plates})
            num_states = num_states or next(n for d, n in sizes.items() if d not in step.plates)
    shape = (num_states,) + tuple(plate_sizes[p] for p in step.plates)
    emissions = _chain_emissions(step, slots, num_states, plate_sizes)  # [T, *plates, S]
    emissions = emissions.reshape(len(step.vars), -1, num_states).transpose(0, 1)  # [N, T, S]
    per_element = any(d in step.plates for _, dims in step.pairwise for d in dims)
    if not per_element:  # shared transitions [T, S, S]: the fused kernels
        pairs = [slots[slot] for slot, _ in step.pairwise]
        if all(isinstance(p, CategoricalTable) and p.is_logits == pairs[0].is_logits
               for p in pairs):  # one log for the stacked parameters of every step
            stacked = log_tables([_renamed(p, step.vars[t : t + 2])
                                  for t, p in enumerate(pairs)], ("prev", "next"))
        else:
            stacked = torch.stack([align(_dense(slots[slot]), dims, step.vars[t : t + 2])
                                   for t, (slot, dims) in enumerate(step.pairwise)], 0)
        return emissions, _with_unused_first_step(stacked), shape[1:]
    masked = _masked_transitions(step, [slots[slot] for slot, _ in step.pairwise], shape[1:])
    if masked is not None:
        return emissions, masked, shape[1:]
    full = (num_states, num_states) + shape[1:]
    transitions = [emissions.new_zeros(full)]
    for t, (slot, dims) in enumerate(step.pairwise):
        target = tuple(step.vars[t : t + 2]) + step.plates
        transitions.append(align(_dense(slots[slot]), dims, target).expand(full))
    transitions = torch.stack(transitions, 0).reshape(len(step.vars), num_states, num_states, -1)
    return emissions, transitions.permute(3, 0, 1, 2), shape[1:]  # [N, T, S, S]


def run_chain(step, slots, semiring, tape=None):
    """Execute a :class:`ChainStep`: ``log sum`` (or ``max``) over all paths, per plate element.

    The log semiring uses the fused forward-backward kernels; the max semiring runs Viterbi
    once and leaves its back-pointers on the tape for :func:`backtrack`.
    """
    from enumdist.engine import chain  # noqa: PLC0415 - the chain kernels load on first use

    emissions, transitions, plate_shape = chain_inputs(step, slots)
    if isinstance(transitions, MaskedTransitions):
        if semiring.name != "logsum":
            delta, pointers = chain.masked_viterbi(emissions.detach(), transitions.table.detach(),
                                                   transitions.mask)
            if tape is not None:
                tape.append((step, ("map", delta, pointers, plate_shape)))
            return delta.amax(-1).reshape(plate_shape)
        transitions = transitions.dense()
    if semiring.name == "logsum":
        if tape is not None:
            tape.append((step, ("sample", emissions.detach(), transitions.detach(), plate_shape)))
        if transitions.dim() == 4:
            out = chain.batched_chain_log_likelihood(emissions, transitions)
        else:
            init = emissions.new_zeros(emissions.shape[-1])
            out = chain.chain_log_likelihood(init, transitions, emissions)
        return out.reshape(plate_shape)
    if transitions.dim() == 3:  # shared transitions: nothing masked
        everywhere = torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        delta, pointers = chain.masked_viterbi(emissions.detach(), transitions.detach(),
                                               everywhere)
    else:
        delta, pointers = chain.batched_viterbi(emissions.detach(), transitions.detach())
    if tape is not None:
        tape.append((step, ("map", delta, pointers, plate_shape)))
    return delta.amax(-1).reshape(plate_shape)


def _backtrack_chain(step, record, generator):
    from enumdist.engine import chain  # noqa: PLC0415

    kind, first, second, plate_shape = record
    if kind == "map":
        states = chain._follow(second, first.argmax(-1))
    elif second.dim() == 4:
        states = chain.batched_chain_sample(first, second, generator)
    else:
        init = first.new_zeros(first.shape[-1])
        states = chain.chain_sample(init, second, first, generator=generator)
    return {v: states[:, t].reshape(plate_shape) for t, v in enumerate(step.vars)}


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
    for step, x in reversed(tape):
        if isinstance(step, ChainStep):
            for var, value in _backtrack_chain(step, x, generator).items():
                decided[var] = (plates.broadcast_decision(value, step.plates), step.plates)
            continue
        x, dims = _with_plates(x.detach(), step.all_dims, step.ordinal, sizes)
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
