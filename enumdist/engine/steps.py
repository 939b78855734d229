"""The plan's vocabulary: the steps of an elimination and the plan that lists them.

:mod:`~enumdist.engine.plan` makes these, :mod:`~enumdist.engine.contract` and the chain adapter
execute them, :mod:`~enumdist.engine.memory` prices them and :mod:`~enumdist.engine.tape` records
them. Slots are integers naming the tensors of one execution: the input factors first, in order,
then each step's output.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SumStep:
    """``out = semiring_sum over var of (sum of inputs broadcast to all_dims)``."""

    inputs: tuple[int, ...]
    input_dims: tuple[tuple[str, ...], ...]
    all_dims: tuple[str, ...]
    var: str
    out_dims: tuple[str, ...]
    out: int
    ordinal: frozenset


@dataclass(frozen=True)
class PlateStep:
    """``out = sum over the plates (a product in log space) of input``."""

    input: int
    input_dims: tuple[str, ...]
    plates: tuple[str, ...]  # reduced plates present in input_dims
    absent_count: int  # product of the sizes of reduced plates absent from the input (broadcast)
    out_dims: tuple[str, ...]
    out: int
    ordinal: frozenset
    target: frozenset


@dataclass(frozen=True)
class ChainStep:
    """A run of :class:`SumStep` s that is a first-order chain ``v_0 - v_1 - ... - v_T``.

    Step ``t`` adds unary factors over ``(v_t, plates)`` and one pairwise factor over
    ``(v_t, v_{t+1})`` (shared, or per plate element) to the running message and eliminates
    ``v_t``. Executed by
    the fused forward-backward of ``engine/chain/`` instead of one autograd node per step.
    """

    vars: tuple[str, ...]
    unary: tuple[tuple[tuple[int, tuple[str, ...]], ...], ...]  # per t: (slot, dims)
    pairwise: tuple[tuple[int, tuple[str, ...]], ...]  # per t < T: (slot, dims)
    plates: tuple[str, ...]  # the output's dims (plates only), in order
    out: int
    ordinal: frozenset
    out_dims: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """The steps of one elimination, in order, and what the caller reads off the result."""

    steps: tuple
    outputs: tuple[tuple[int, tuple[str, ...], frozenset], ...]  # (slot, dims, ordinal)
    num_slots: int
    var_ordinal: dict
    largest: tuple[tuple[str, ...], int]  # (dims, elements) of the largest product tensor
    #: (elements kept by all steps, largest forward working set, largest backward working set)
    memory: tuple[int, int, int] = (0, 0, 0)
