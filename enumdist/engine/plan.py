"""Plan stage: an elimination order for plated tensor variable elimination (TVE).

A plan is computed from the *structure* of a problem alone -- each factor's dim names and
ordinal (the plates it lives in), the dims' sizes, and which variables are summed -- so it is
cached and reused across SVI steps. Executing it (``contract.py``) needs only tensor ops. The
steps are defined in ``steps.py``; their memory estimate and the budget check in ``memory.py``.

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
from functools import lru_cache

import torch

from enumdist.engine.errors import NonTreePlatesError
from enumdist.engine.memory import FORWARD, GRADIENT, check_budget, plan_memory
from enumdist.engine.steps import ChainStep, Plan, PlateStep, SumStep

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
            chain = ChainStep(
                tuple(vars_),
                tuple(unary),
                tuple(pairwise),
                step.out_dims,
                step.out,
                step.ordinal,
                step.out_dims,
            )
            return chain, i + 1
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        if not isinstance(nxt, SumStep) or nxt.var != pair[2] or step.out not in nxt.inputs:
            return None
        pairwise.append((pair[0], pair[1]))
        prev_out = step.out
        i += 1
    return None


def var_ordinals(factors) -> dict[str, frozenset]:
    """Each variable lives in the plates common to all factors that mention it (as Pyro)."""
    result: dict[str, frozenset] = {}
    for dims, ordinal in factors:
        for d in dims:
            if d not in ordinal:
                result[d] = result.get(d, ordinal) & ordinal
    return result


class _Planner:
    """The state of one :func:`make_plan`: slots' dims, the steps so far, the ordinals to do.

    ``buckets`` maps an ordinal to the slots waiting there; :meth:`eliminate_local` and
    :meth:`hand_outward` are the two halves of processing one ordinal.
    """

    def __init__(self, structure, sizes, sum_vars, plate_names):
        self.sizes, self.sum_vars, self.plate_names = sizes, sum_vars, plate_names
        self.dims_of: list[tuple[str, ...]] = [tuple(d) for d, _ in structure]
        self.var_ordinal = var_ordinals(structure)
        self.buckets: dict[frozenset, list[int]] = {}
        for slot, (_, ordinal) in enumerate(structure):
            self.buckets.setdefault(ordinal, []).append(slot)
        self.steps: list[SumStep | PlateStep] = []
        self.outputs: list[tuple[int, tuple[str, ...], frozenset]] = []
        self.largest: tuple[tuple[str, ...], int] = ((), 0)

    def new_slot(self, dims) -> int:
        self.dims_of.append(tuple(dims))
        return len(self.dims_of) - 1

    def numel(self, dims) -> int:
        return math.prod(self.sizes[d] for d in dims)

    def union_dims(self, slots) -> tuple[str, ...]:
        """The dims of ``slots``, in order of first appearance (slots in increasing order)."""
        seen: dict[str, None] = {}
        for s in sorted(slots):
            for d in self.dims_of[s]:
                seen.setdefault(d, None)
        return tuple(seen)

    def next_ordinal(self) -> tuple[frozenset, set[int]]:
        """The deepest ordinal left (ties broken by plate names) and its slots, taken out."""
        leaf = max(self.buckets, key=lambda o: (len(o), sorted(o)))
        return leaf, set(self.buckets.pop(leaf))

    def eliminate_local(self, leaf: frozenset, pool: set[int]) -> set[int]:
        """Sum out the variables that live exactly in ``leaf``, smallest product first.

        Ties go to the variable that appears first (which turns a ``pyro.markov`` chain into a
        forward recursion). A variable's cost is updated lazily: a heap entry whose version is
        stale is skipped. Returns the pool of slots left at ``leaf``.
        """
        order: dict[str, int] = {}  # first appearance, for deterministic tie breaking
        for slot in sorted(pool):
            for d in self.dims_of[slot]:
                order.setdefault(d, len(order))
        local = {d for d in order if d in self.sum_vars and self.var_ordinal[d] == leaf}
        holders = {v: {s for s in pool if v in self.dims_of[s]} for v in local}
        version = {v: 0 for v in local}
        heap = [(self.numel(self.union_dims(holders[v])), order[v], v, 0) for v in local]
        heapq.heapify(heap)
        while heap:
            cost, _, var, ver = heapq.heappop(heap)
            if var not in local or ver != version[var]:
                continue
            group = holders.pop(var)
            local.discard(var)
            out = self.sum_step(leaf, var, group, cost)
            pool -= group
            pool.add(out)
            for v in self.dims_of[out]:
                if v in local:
                    holders[v] = (holders[v] - group) | {out}
                    version[v] += 1
                    cost_v = self.numel(self.union_dims(holders[v]))
                    heapq.heappush(heap, (cost_v, order[v], v, version[v]))
        return pool

    def sum_step(self, leaf: frozenset, var: str, group: set[int], cost: int) -> int:
        """Append the :class:`SumStep` eliminating ``var`` from ``group``; its output slot."""
        all_dims = self.union_dims(group)
        if cost > self.largest[1]:
            self.largest = (all_dims, cost)
        out_dims = tuple(d for d in all_dims if d != var)
        out = self.new_slot(out_dims)
        inputs = tuple(sorted(group))
        input_dims = tuple(self.dims_of[s] for s in inputs)
        self.steps.append(SumStep(inputs, input_dims, all_dims, var, out_dims, out, leaf))
        return out

    def hand_outward(self, leaf: frozenset, pool: set[int]) -> None:
        """Each slot left at ``leaf``: an output if no summed variable remains in it, else its
        product over the plates no remaining variable lives in, queued at the enclosing ordinal.

        Raises :class:`NonTreePlatesError` when no plate can be reduced (the plates cross).
        """
        for slot in sorted(pool):
            dims = self.dims_of[slot]
            remaining = [d for d in dims if d not in self.plate_names]
            if not any(d in self.sum_vars for d in remaining):
                self.outputs.append((slot, dims, leaf))
                continue
            target = frozenset().union(*(self.var_ordinal[d] for d in remaining))
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
            absent = math.prod(self.sizes[p] for p in reduced if p not in dims)
            out_dims = tuple(d for d in dims if d not in present)
            out = self.new_slot(out_dims)
            self.steps.append(PlateStep(slot, dims, present, absent, out_dims, out, leaf, target))
            self.buckets.setdefault(target, []).append(out)


def make_plan(structure, sizes, sum_vars, plate_names) -> Plan:
    """Plan the elimination. ``structure`` is a tuple of ``(dims, ordinal)``, one per factor.

    Ordinals are processed deepest first: eliminate what is local there, hand the rest outward;
    then chain-shaped runs of steps are fused. Pure and deterministic; :func:`cached_plan`
    memoises it by structure.
    """
    planner = _Planner(structure, sizes, sum_vars, plate_names)
    while planner.buckets:
        leaf, pool = planner.next_ordinal()
        planner.hand_outward(leaf, planner.eliminate_local(leaf, pool))
    steps = fuse_chains(planner.steps, sizes, plate_names)
    return Plan(
        tuple(steps),
        tuple(planner.outputs),
        len(planner.dims_of),
        planner.var_ordinal,
        planner.largest,
        plan_memory(steps, sizes),
    )


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


# -- problems: sizes and the cached, budget-checked plan ------------------------------------


def problem_sizes(problem) -> dict[str, int]:
    """The size of every plate and enumerated variable of a traced problem."""
    sizes = {name: plate.size for name, plate in problem.plates.items()}
    sizes.update({name: var.size for name, var in problem.vars.items()})
    return sizes


def plan_for(problem, terms, memory_budget=None, execution=None, expanded_inputs=False):
    """The cached elimination plan for ``terms`` (model log-factors), checked against a budget.

    ``execution`` (one of :data:`~enumdist.engine.memory.EXECUTIONS`; default: ``GRADIENT`` while autograd records,
    else ``FORWARD``) says what the caller keeps alive; ``expanded_inputs``: the caller
    materialises every input over all the plates of its site (``compute_marginals`` does).
    Raises :class:`~enumdist.engine.errors.MemoryBudgetError` before anything is allocated when
    :func:`~enumdist.engine.memory.peak_bytes` exceeds ``memory_budget``.
    """
    structure = [(t.factor.dims, t.ordinal) for t in terms]
    sizes = problem_sizes(problem)
    plan = cached_plan(structure, sizes, problem.sum_vars, problem.plates.keys())
    if memory_budget is None or not terms:
        return plan
    if execution is None:
        execution = GRADIENT if torch.is_grad_enabled() else FORWARD
    itemsize = terms[0].factor.element_size()
    inputs = sum(
        math.prod(sizes[d] for d in set(t.factor.dims) | (t.ordinal if expanded_inputs else set()))
        for t in terms
    )
    check_budget(plan, sizes, itemsize, inputs, execution, memory_budget)
    return plan
