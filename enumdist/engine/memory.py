"""Memory estimate of a plan: what executing it keeps alive, and the refusal over a budget.

A plan's memory is priced once, when it is made (plans are cached by structure and sizes), from
the sizes of its steps' product tensors; :func:`peak_bytes` turns that into bytes for one way of
executing it, and :func:`check_budget` refuses before anything is allocated. The working-set
factors below were measured (see ``tests/engine/test_memory_budget.py``).
"""

from __future__ import annotations

import math
import os

from enumdist.engine.errors import MemoryBudgetError
from enumdist.engine.steps import ChainStep, Plan, SumStep


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


def plan_memory(steps, sizes) -> tuple[int, int, int]:
    """:attr:`~enumdist.engine.steps.Plan.memory`, computed once per plan (plans are cached by structure and sizes)."""
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


def check_budget(plan: Plan, sizes, itemsize: int, inputs: int, execution: str, memory_budget):
    """Raise :class:`MemoryBudgetError` when :func:`peak_bytes` exceeds ``memory_budget``.

    The message names the largest product tensor, the estimate and the ways out; the error
    carries ``peak_bytes`` and ``memory_budget``.
    """
    peak = peak_bytes(plan, itemsize, inputs, execution)
    if peak <= memory_budget:
        return
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


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
