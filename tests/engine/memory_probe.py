"""Run one entry point on a problem whose elimination is large, in a fresh process, and report
the memory preflight's estimate and the peak RSS growth (``python -m tests.engine.memory_probe
ENTRY``; prints one JSON line). Used by ``test_memory_budget.py``.

The problem: three enumerated variables of ``S`` states in a cycle of pairwise factors. Every
factor is small (``S**2``), but eliminating any of the variables builds an ``S**3`` product.
"""

from __future__ import annotations

import json
import sys

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.ops.indexing import Vindex

import enumdist
from enumdist.engine.errors import MemoryBudgetError
from tests.engine.zoo import empty_guide

ENUM = {"enumerate": "parallel"}
STATES = 172  # products of 39 MiB: above glibc's largest mmap threshold (32 MiB), so RSS sees them


def cycle(num_states):
    def model():
        tables = [
            pyro.param(
                f"table_{i}",
                torch.randn(num_states, num_states, generator=torch.Generator().manual_seed(i)),
            )
            for i in range(3)
        ]
        a = pyro.sample("a", dist.Categorical(logits=torch.zeros(num_states)), infer=ENUM)
        b = pyro.sample("b", dist.Categorical(logits=Vindex(tables[0])[a]), infer=ENUM)
        c = pyro.sample("c", dist.Categorical(logits=Vindex(tables[1])[b]), infer=ENUM)
        pyro.factor("closing", Vindex(tables[2])[c, a])
        return a, b, c

    return model


def run(entry, num_states, budget):
    """Run ``entry`` once on :func:`cycle` with ``memory_budget=budget``."""
    model = cycle(num_states)
    elbo = enumdist.EnumELBO(max_plate_nesting=0, memory_budget=budget)
    if entry == "loss":
        elbo.loss(model, empty_guide)
    elif entry == "loss_and_grads":
        elbo.loss_and_grads(model, empty_guide)
    elif entry == "compute_marginals":
        elbo.compute_marginals(model, empty_guide)
    elif entry == "sample_posterior":
        elbo.sample_posterior(model, empty_guide)
    elif entry.startswith("infer_discrete"):
        temperature = int(entry[-1])
        decoder = enumdist.infer_discrete(
            model, first_available_dim=-1, temperature=temperature, memory_budget=budget
        )
        poutine.trace(decoder).get_trace()
    else:
        raise ValueError(entry)


def reset_peak() -> int:
    """Reset the kernel's peak-resident-set mark (``VmHWM``) to the resident set now; return it.

    Writing 5 to ``/proc/self/clear_refs`` does this (Linux >= 4.0), so a later :func:`peak_rss`
    sees only what runs after it, however high an earlier peak was.
    """
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """The peak resident set since the last :func:`reset_peak`, in bytes."""
    return _status_kib("VmHWM") * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main(entry):
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    run(entry, 8, None)  # load every code path on a tiny problem first
    pyro.clear_param_store()
    start = reset_peak()
    try:  # a budget far above every factor but below the elimination: refused up front
        run(entry, STATES, 8 * STATES**2 * 4)
        raise AssertionError("the preflight admitted a run over its budget")
    except MemoryBudgetError as exc:  # poutine.trace re-raises a copy: the original is its cause
        estimate = getattr(exc, "peak_bytes", None) or exc.__cause__.peak_bytes
    refused_growth = max(0, peak_rss() - start)
    start = reset_peak()
    run(entry, STATES, estimate)  # exactly the estimate: admitted
    print(
        json.dumps(
            {
                "estimate": estimate,
                "refused_growth": refused_growth,
                "admitted_growth": peak_rss() - start,
                "product_bytes": 8 * STATES**3,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
