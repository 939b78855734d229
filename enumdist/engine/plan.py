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
import os
from dataclasses import dataclass
from functools import lru_cache

import torch

from enumdist.engine.errors import MemoryBudgetError, NonTreePlatesError


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


@dataclass(frozen=True)
class Plan:
    steps: tuple
    outputs: tuple[tuple[int, tuple[str, ...], frozenset], ...]  # (slot, dims, ordinal)
    num_slots: int
    var_ordinal: dict
    largest: tuple[tuple[str, ...], int]  # (dims, elements) of the largest product tensor
    #: (elements kept by all steps, largest forward working set, largest backward working set)
    memory: tuple[int, int, int] = (0, 0, 0)


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
    steps: list[SumStep | PlateStep] = []
    outputs = []
    largest = ((), 0)

    def new_slot(dims):
        dims_of.append(tuple(dims))
        return len(dims_of) - 1

    def numel(dims):
        return math.prod(sizes[d] for d in dims)

    while buckets:
        leaf = max(buckets, key=lambda o: (len(o), sorted(o)))
        pool = set(buckets.pop(leaf))
        order: dict[str, int] = {}  # first appearance, for deterministic tie breaking
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
                SumStep(
                    inputs, tuple(dims_of[s] for s in inputs), all_dims, var, out_dims, out, leaf
                )
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
    return Plan(
        tuple(steps), tuple(outputs), len(dims_of), var_ordinal, largest, _memory_of(steps, sizes)
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


# -- problems: sizes, the cached plan, and the memory preflight --------------------------------


def problem_sizes(problem) -> dict[str, int]:
    """The size of every plate and enumerated variable of a traced problem."""
    sizes = {name: plate.size for name, plate in problem.plates.items()}
    sizes.update({name: var.size for name, var in problem.vars.items()})
    return sizes


def default_memory_budget() -> int:
    """Half of this machine's physical memory: a refusal beats an out-of-memory kill."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 8 * 2**30


#: How a plan is executed, which decides what stays alive at once (see :func:`peak_bytes`).
FORWARD = "forward"  # a loss without a graph: intermediates are freed as soon as they are used
GRADIENT = "gradient"  # a differentiable loss: product tensors are saved for the backward pass
MARGINALS = "marginals"  # compute_marginals: plate-expanded leaves, saved products, leaf grads
DECODE = "decode"  # infer_discrete / sample_posterior: products kept on a tape, walked back
EXECUTIONS = (FORWARD, GRADIENT, MARGINALS, DECODE)

# Working set of one elimination step, in product tensors: the sum of the inputs being built
# (an addition makes a new tensor while the old one is alive) and log-sum-exp's shifted copy and
# its exponential. Its backward pass (shifted copy, exponential, their product, and the
# gradient passed on to the inputs) needs one more. Measured on a 31 MiB product: a loss peaks
# at 2.1 products, a decoding at 2.1, marginals at 3.7, a loss with gradients at 4.1 (kept
# product included); see tests/engine/test_memory_budget.py.
_STEP_WORKING_SET = 3
_BACKWARD_WORKING_SET = 4
# A fused chain: stacked emissions, scaled forward and backward messages and their gradients,
# each the size of the emissions [N, T, S].
_CHAIN_WORKING_SET = 8


def _step_cost(step, sizes, backward: bool) -> tuple[int, int]:
    """``(kept, transient)`` elements of one step: what outlives it (saved for backward or
    decoding) and its peak working set while it (or its backward pass) runs."""
    if isinstance(step, SumStep):
        product = math.prod(sizes[d] for d in step.all_dims)
        return product, (_BACKWARD_WORKING_SET if backward else _STEP_WORKING_SET) * product
    if isinstance(step, ChainStep):
        elements = math.prod(sizes[p] for p in step.plates)
        num_states = sizes[step.vars[0]]
        emissions = elements * len(step.vars) * num_states
        per_element = any(p in dims for _, dims in step.pairwise for p in step.plates)
        transitions = len(step.vars) * num_states**2 * (elements if per_element else 1)
        return 2 * emissions + transitions, _CHAIN_WORKING_SET * emissions + 2 * transitions
    return 0, 0  # a plate step makes a smaller tensor out of a larger one


def _memory_of(steps, sizes) -> tuple[int, int, int]:
    """:attr:`Plan.memory`, computed once per plan (plans are cached by structure and sizes)."""
    forward = [_step_cost(step, sizes, False) for step in steps]
    backward = [_step_cost(step, sizes, True) for step in steps]
    return (
        sum(k for k, _ in forward),
        max((t for _, t in forward), default=0),
        max((t for _, t in backward), default=0),
    )


def peak_bytes(plan: Plan, itemsize: int, input_elements: int, execution: str) -> int:
    """Estimated peak bytes of executing ``plan`` once (and its backward pass or decoding).

    ``input_elements``: elements of the input factors, alive throughout. The estimate is the
    inputs, plus everything kept for later (every product tensor when a backward pass or a
    decoding walks back over them), plus the working set of the most expensive step; a
    gradient pass adds the inputs' gradients. It is meant as an upper bound (the tests compare
    it with the peak RSS of real runs).
    """
    if execution not in EXECUTIONS:
        raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
    backward = execution in (GRADIENT, MARGINALS)
    kept, forward_set, backward_set = plan.memory
    kept = kept if execution != FORWARD else 0
    transient = backward_set if backward else forward_set
    inputs = input_elements * (2 if backward else 1)
    return itemsize * (inputs + kept + transient)


def plan_for(problem, terms, memory_budget=None, execution=None, expanded_inputs=False):
    """The cached elimination plan for ``terms`` (model log-factors), checked against a budget.

    ``execution`` (one of :data:`EXECUTIONS`; default: ``GRADIENT`` while autograd records,
    else ``FORWARD``) says what the caller keeps alive; ``expanded_inputs``: the caller
    materialises every input over all the plates of its site (``compute_marginals`` does).
    Raises :class:`MemoryBudgetError` before anything is allocated when :func:`peak_bytes`
    exceeds ``memory_budget``.
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
    peak = peak_bytes(plan, itemsize, inputs, execution)
    if peak > memory_budget:
        dims, numel = plan.largest
        error = MemoryBudgetError(
            f"the elimination would build a tensor over {list(dims)} of shape "
            f"{tuple(sizes[d] for d in dims)} ({format_bytes(numel * itemsize)}) and, with its "
            f"inputs and what the {execution} pass keeps alive, peak at about "
            f"{format_bytes(peak)}, over memory_budget={format_bytes(memory_budget)}. Reduce "
            "the number of variables that interact at once (pyro.markov history, fewer "
            "states), enumerate a global variable with infer={'enumerate': 'sequential'}, "
            "shard a plate over ranks, or raise memory_budget."
        )
        error.peak_bytes, error.memory_budget = peak, memory_budget
        raise error
    return plan


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
