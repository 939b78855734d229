"""Plan stage: an elimination order for plated tensor variable elimination (TVE).

A plan is computed from the *structure* of a problem alone -- each factor's dim names and
ordinal (the plates it lives in), the dims' sizes, and which variables are summed -- so it is
cached and reused across SVI steps. Executing it (``contract.py``) needs only tensor ops.

The algorithm processes plate levels from the deepest ordinal outwards. At each ordinal it
eliminates the variables local to that ordinal one at a time (greedy: the variable whose
product tensor is smallest goes first, ties broken by first appearance, which turns a
``pyro.markov`` chain into a forward recursion), then takes the product over the plates that no
remaining variable lives in and hands the result to the enclosing ordinal. Terms left with no
summed variable are *outputs*: they stay at their ordinal, un-reduced, as ``TraceEnum_ELBO``'s
``contract_tensor_tree`` leaves them (the loss sums them; Dice weights them).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from functools import lru_cache

from enumdist.engine.errors import NonTreePlatesError


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
    the fused forward-backward of ``chain.py`` instead of one autograd node per step.
    """

    vars: tuple[str, ...]
    unary: tuple[tuple[tuple[int, tuple[str, ...]], ...], ...]  # per t: (slot, dims)
    pairwise: tuple[tuple[int, tuple[str, ...]], ...]  # per t < T: (slot, dims)
    plates: tuple[str, ...]  # the output's dims (plates only), in order
    out: int
    ordinal: frozenset
    out_dims: tuple[str, ...] = ()


MIN_CHAIN = 4  # shorter runs are cheaper step by step


def _chain_link(step, plate_names):
    """Split a step's inputs into unary ones and at most one pairwise one, or None."""
    unary, pairwise = [], []
    for slot, dims in zip(step.inputs, step.input_dims):
        others = [d for d in dims if d not in plate_names and d != step.var]
        if not others:
            unary.append((slot, dims))
        elif len(others) == 1:
            pairwise.append((slot, dims, others[0]))
        else:
            return None
    if len(pairwise) > 1:
        return None
    return unary, (pairwise[0] if pairwise else None)


def fuse_chains(steps, sizes, plate_names):
    """Replace maximal chain-shaped runs of sum steps by :class:`ChainStep` s."""
    steps = list(steps)
    fused, i = [], 0
    while i < len(steps):
        run = _chain_run(steps, i, sizes, plate_names)
        if run is None:
            fused.append(steps[i])
            i += 1
            continue
        fused.append(run[0])
        i = run[1]
    return tuple(fused)


def _chain_run(steps, start, sizes, plate_names):
    vars_, unary, pairwise = [], [], []
    prev_out, i = None, start
    while i < len(steps) and isinstance(steps[i], SumStep):
        step = steps[i]
        link = _chain_link(step, plate_names)
        if link is None or (vars_ and sizes[step.var] != sizes[vars_[0]]):
            return None
        units, pair = link
        if prev_out is not None:
            if prev_out not in [slot for slot, _ in units]:
                return None
            units = [(slot, dims) for slot, dims in units if slot != prev_out]
        elif not units:
            return None
        vars_.append(step.var)
        unary.append(tuple(units))
        if pair is None:  # the chain's end: the output carries plates only
            if len(vars_) < MIN_CHAIN or any(d not in plate_names for d in step.out_dims):
                return None
            chain = ChainStep(tuple(vars_), tuple(unary), tuple(pairwise), step.out_dims,
                              step.out, step.ordinal, step.out_dims)
            return chain, i + 1
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        if not isinstance(nxt, SumStep) or nxt.var != pair[2] or step.out not in nxt.inputs:
            return None
        pairwise.append((pair[0], pair[1]))
        prev_out = step.out
        i += 1
    return None


@dataclass(frozen=True)
class Plan:
    steps: tuple
    outputs: tuple[tuple[int, tuple[str, ...], frozenset], ...]  # (slot, dims, ordinal)
    num_slots: int
    var_ordinal: dict
    largest: tuple[tuple[str, ...], int]  # (dims, elements) of the largest product tensor


def var_ordinals(factors) -> dict[str, frozenset]:
    """Each variable lives in the plates common to all factors that mention it (as Pyro)."""
    result: dict[str, frozenset] = {}
    for dims, ordinal in factors:
        for d in dims:
            if d not in ordinal:
                result[d] = result.get(d, ordinal) & ordinal
    return result


def make_plan(structure, sizes, sum_vars, plate_names) -> Plan:
    """Plan the elimination. ``structure`` is a tuple of ``(dims, ordinal)``, one per factor.

    Pure and deterministic; :func:`cached_plan` memoises it by structure.
    """
    dims_of: list[tuple[str, ...]] = [tuple(d) for d, _ in structure]
    var_ordinal = var_ordinals(structure)
    buckets: dict[frozenset, list[int]] = {}
    for slot, (_, ordinal) in enumerate(structure):
        buckets.setdefault(ordinal, []).append(slot)
    steps, outputs = [], []
    largest = ((), 0)

    def new_slot(dims):
        dims_of.append(tuple(dims))
        return len(dims_of) - 1

    def numel(dims):
        return math.prod(sizes[d] for d in dims)

    while buckets:
        leaf = max(buckets, key=lambda o: (len(o), sorted(o)))
        pool = set(buckets.pop(leaf))
        order = {}  # first appearance, for deterministic tie breaking
        for slot in sorted(pool):
            for d in dims_of[slot]:
                order.setdefault(d, len(order))
        local = {d for d in order if d in sum_vars and var_ordinal[d] == leaf}
        holders = {v: {s for s in pool if v in dims_of[s]} for v in local}

        def union_dims(slots):
            seen = {}
            for s in sorted(slots):
                for d in dims_of[s]:
                    seen.setdefault(d, None)
            return tuple(seen)

        version = {v: 0 for v in local}
        heap = [(numel(union_dims(holders[v])), order[v], v, 0) for v in local]
        heapq.heapify(heap)
        while heap:
            cost, _, var, ver = heapq.heappop(heap)
            if var not in local or ver != version[var]:
                continue
            group = holders.pop(var)
            local.discard(var)
            all_dims = union_dims(group)
            if cost > largest[1]:
                largest = (all_dims, cost)
            out_dims = tuple(d for d in all_dims if d != var)
            out = new_slot(out_dims)
            inputs = tuple(sorted(group))
            steps.append(
                SumStep(inputs, tuple(dims_of[s] for s in inputs), all_dims, var, out_dims, out, leaf)
            )
            pool -= group
            pool.add(out)
            for v in out_dims:
                if v in local:
                    holders[v] = (holders[v] - group) | {out}
                    version[v] += 1
                    heapq.heappush(heap, (numel(union_dims(holders[v])), order[v], v, version[v]))

        for slot in sorted(pool):
            dims = dims_of[slot]
            remaining = [d for d in dims if d not in plate_names]
            if not any(d in sum_vars for d in remaining):
                outputs.append((slot, dims, leaf))
                continue
            target = frozenset().union(*(var_ordinal[d] for d in remaining))
            if target == leaf:
                raise NonTreePlatesError(
                    "Expected tree-structured plate nesting, but the plate structure is not a "
                    "tree: variables "
                    f"{sorted(remaining)} live in plates {sorted(leaf)} without any of them "
                    "living in all of those plates, so no order of elimination is exact. "
                    "Nest the plates, or move one variable outside the crossing plate."
                )
            reduced = sorted(leaf - target)
            present = tuple(p for p in reduced if p in dims)
            absent = math.prod(sizes[p] for p in reduced if p not in dims)
            out_dims = tuple(d for d in dims if d not in present)
            out = new_slot(out_dims)
            steps.append(PlateStep(slot, dims, present, absent, out_dims, out, leaf, target))
            buckets.setdefault(target, []).append(out)

    steps = fuse_chains(steps, sizes, plate_names)
    return Plan(tuple(steps), tuple(outputs), len(dims_of), var_ordinal, largest)


@lru_cache(maxsize=256)
def _cached(structure, sizes_items, sum_vars, plate_names):
    return make_plan(structure, dict(sizes_items), sum_vars, plate_names)


def cached_plan(structure, sizes, sum_vars, plate_names) -> Plan:
    """:func:`make_plan`, memoised by (structure, sizes): planning runs once per model shape."""
    return _cached(
        tuple((tuple(d), o) for d, o in structure),
        tuple(sorted(sizes.items())),
        frozenset(sum_vars),
        frozenset(plate_names),
    )
