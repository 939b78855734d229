"""From a plan's :class:`~enumdist.engine.steps.ChainStep` to the chain kernels.

A chain step names its factors by slot; this module stacks them into the kernels' inputs
(emissions ``[N, T, S]``, transitions ``[T, S, S]``, per-sequence ``[N, T, S, S]`` or
:class:`MaskedTransitions`), runs the kernel the semiring asks for, and turns recorded kernel
outputs back into per-variable states for ``contract.backtrack``. Which kernel runs, and how
its record is walked back, is the semiring's (``semiring.chain`` / ``chain_states``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from enumdist.engine.factors import align, dense
from enumdist.engine.lazy import STACK, CategoricalTable, log_tables
from enumdist.engine.tape import ChainRecord


class Row:
    """Row ``index`` of a batched result: a chain reads consecutive rows as one slice."""

    def __init__(self, stack: torch.Tensor, index: int):
        self.stack, self.index = stack, index

    @property
    def tensor(self) -> torch.Tensor:
        return self.stack[self.index]


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
    shape = (*tuple(plate_sizes[p] for p in step.plates), num_states)
    rows = [
        [(slots[slot], dims) for slot, dims in units if isinstance(slots[slot], Row)]
        for units in step.unary
    ]
    first = rows[0][0][0] if rows[0] else None
    if first is not None and all(
        len(r) == 1 and r[0][0].stack is first.stack and r[0][0].index == first.index + t
        for t, r in enumerate(rows)
    ):
        dims = rows[0][0][1]
        batch = first.stack[first.index : first.index + len(step.vars)]
        batch = align(batch, (STACK, *dims), (STACK, *step.plates, step.vars[0]))
        emissions = batch.expand((len(step.vars), *shape))
        extra_steps, extras = [], []
        for t, (var, units) in enumerate(zip(step.vars, step.unary)):
            others = [(slots[s], d) for s, d in units if not isinstance(slots[s], Row)]
            if others:
                target = (*step.plates, var)
                extra_steps.append(t)
                extras.append(sum(align(dense(x), d, target) for x, d in others).expand(shape))
        if extras:
            index = torch.tensor(extra_steps, device=emissions.device)
            emissions = emissions.index_add(0, index, torch.stack(extras))
        return emissions
    totals = [
        sum(align(dense(slots[slot]), dims, (*step.plates, var)) for slot, dims in units)
        if units
        else None
        for var, units in zip(step.vars, step.unary)
    ]
    like = next(t for t in totals if t is not None)
    zero = like.new_zeros(())  # a step with no unary term (nothing observed there)
    return torch.stack([(zero if t is None else t).expand(shape) for t in totals], 0)


def _renamed(table, pair):
    """``table`` over the chain pair ``(v_t, v_t+1)`` with those dims renamed prev / next."""
    names = {pair[0]: "prev", pair[1]: "next"}
    return CategoricalTable(table.param, tuple(names[d] for d in table.param_dims), table.is_logits)


def _with_unused_first_step(transitions: torch.Tensor) -> torch.Tensor:
    """Prepend the (unused, zero) transition into step 0: the kernels index them by step."""
    return torch.cat([transitions.new_zeros((1, *transitions.shape[1:])), transitions])


@dataclass(frozen=True)
class ChainInputs:
    """A chain step's factors stacked for the kernels.

    ``transitions`` is shared ``[T, S, S]`` or per sequence ``[N, T, S, S]``; ``mask [N, T]``
    (or None) says where a shared table applies -- elsewhere the transition is zero, no
    constraint (``infer_discrete`` masks the enumerated sites of padded steps).
    ``transitions[.., 0]`` is unused; ``plate_shape`` is the plates the ``N`` rows flatten.
    """

    emissions: torch.Tensor  # [N, T, S]
    transitions: torch.Tensor
    mask: torch.Tensor | None
    plate_shape: tuple[int, ...]

    def per_sequence_transitions(self) -> torch.Tensor:
        """The transitions with the mask applied: ``[T, S, S]`` if none, else ``[N, T, S, S]``."""
        if self.mask is None:
            return self.transitions
        zero = self.transitions.new_zeros(())
        return torch.where(self.mask[..., None, None], self.transitions, zero)


def _masked_transitions(step, pairs, plate_shape):
    """``(table [T, S, S], mask [N, T])`` when every pairwise factor is a table over its pair with a
    mask over the chain's plates only; else None."""
    if not all(
        isinstance(p, CategoricalTable)
        and p.mask is not None
        and p.is_logits == pairs[0].is_logits
        and set(p.mask.dims) <= set(step.plates)
        for p in pairs
    ):
        return None
    if any(set(p.param_dims) != set(step.vars[t : t + 2]) for t, p in enumerate(pairs)):
        return None
    table = log_tables(
        [_renamed(p, step.vars[t : t + 2]) for t, p in enumerate(pairs)], ("prev", "next")
    )
    masks = [align(p.mask.tensor, p.mask.dims, step.plates) for p in pairs]
    num_plate_elements = math.prod(plate_shape)
    mask = torch.stack([m.expand(plate_shape).reshape(num_plate_elements) for m in masks], 1)
    return (
        _with_unused_first_step(table),
        torch.cat([mask.new_ones(num_plate_elements, 1), mask], 1),
    )


def chain_inputs(step, slots):
    """Stack a chain's factors into :class:`ChainInputs`."""
    num_states = None
    plate_sizes = {}
    for units in step.unary:
        for slot, dims in units:
            sizes = dict(zip(dims, _shape(slots[slot])))
            plate_sizes.update({d: n for d, n in sizes.items() if d in step.plates})
            num_states = num_states or next(n for d, n in sizes.items() if d not in step.plates)
    shape = (num_states, *tuple(plate_sizes[p] for p in step.plates))
    emissions = _chain_emissions(step, slots, num_states, plate_sizes)  # [T, *plates, S]
    emissions = emissions.reshape(len(step.vars), -1, num_states).transpose(0, 1)  # [N, T, S]
    per_element = any(d in step.plates for _, dims in step.pairwise for d in dims)
    if not per_element:  # shared transitions [T, S, S]: the fused kernels
        pairs = [slots[slot] for slot, _ in step.pairwise]
        if all(
            isinstance(p, CategoricalTable) and p.is_logits == pairs[0].is_logits for p in pairs
        ):  # one log for the stacked parameters of every step
            stacked = log_tables(
                [_renamed(p, step.vars[t : t + 2]) for t, p in enumerate(pairs)], ("prev", "next")
            )
        else:
            stacked = torch.stack(
                [
                    align(dense(slots[slot]), dims, step.vars[t : t + 2])
                    for t, (slot, dims) in enumerate(step.pairwise)
                ],
                0,
            )
        return ChainInputs(emissions, _with_unused_first_step(stacked), None, shape[1:])
    masked = _masked_transitions(step, [slots[slot] for slot, _ in step.pairwise], shape[1:])
    if masked is not None:
        return ChainInputs(emissions, *masked, shape[1:])
    full = (num_states, num_states, *shape[1:])
    transitions = [emissions.new_zeros(full)]
    for t, (slot, dims) in enumerate(step.pairwise):
        target = tuple(step.vars[t : t + 2]) + step.plates
        transitions.append(align(dense(slots[slot]), dims, target).expand(full))
    transitions = torch.stack(transitions, 0).reshape(len(step.vars), num_states, num_states, -1)
    return ChainInputs(emissions, transitions.permute(3, 0, 1, 2), None, shape[1:])


def run_chain(step, slots, semiring, tape=None):
    """Execute a :class:`ChainStep`: the semiring's sum over all paths, per plate element
    (``plate_shape``). With a ``tape`` the kernel's record goes on it for ``backtrack``."""
    inputs = chain_inputs(step, slots)
    out, memo = semiring.chain(inputs)
    if tape is not None:
        tape.append(ChainRecord(step, memo, inputs.plate_shape))
    return out.reshape(inputs.plate_shape)


def chain_decisions(record, semiring, generator=None) -> dict:
    """``{var: states over the chain's plates}`` for a chain record, by the semiring's choice."""
    states = semiring.chain_states(record.memo, generator)
    return {v: states[:, t].reshape(record.plate_shape) for t, v in enumerate(record.step.vars)}
