"""Per-item probabilities of decoded output: ``log p(z, x)`` of the decoded path, the evidence
``log p(x)`` and the path's posterior probability ``p(z | x)``.

Both come from the engine's own factors (``EnumProblem``), exactly:

* the *evidence* traces the model under parallel enumeration and eliminates every enumerated
  variable in the log semiring (``contract``), which leaves one term per element of the data
  plate -- the plate is not summed, so each item keeps its own ``log p(x_i)``;
* the *joint* scores the decoded trace, in which ``infer_discrete`` has fixed every enumerated
  site: there is nothing left to eliminate, every site is a plain (masked) factor.

What belongs to an item: the factors inside the data plate (``model.shard_plate``) -- its
observations and its enumerated states -- unscaled (the plate's subsample scale is a training
device, not part of ``p``), given the values of any non-enumerated latents the guide supplies
(they are replayed, as in decoding; their own prior is not the item's, and neither is any factor
outside the plate, such as a MAP prior on the parameters). Enumerated sites enter the evidence
unmasked, as in ``TraceEnum_ELBO`` (a padded step's state sums to one), and the joint masked, as
in ``infer_discrete`` (a padded step's state is no part of the path): both then cover exactly the
item's real steps, and ``p(z | x) = exp(log p(z, x) - log p(x))``.

An enumerated variable outside the data plate couples the items: no item then has a probability
of its own, and :func:`log_evidence` says so instead of returning a number.
"""

from __future__ import annotations

import math

import torch
from pyro import poutine

from enumdist.engine import trace as trace_stage
from enumdist.engine.handlers import AsParallel
from enumdist.engine.loss import contracted_terms, problem_sizes


def per_item(terms, plate: str, batch_size: int, sizes: dict[str, int]) -> torch.Tensor:
    """``sum`` of ``[(tensor, dims, ordinal)]`` over everything but ``plate`` -> float64 ``[B]``.

    A term broadcast over a plate of its ordinal counts once per element of that plate; terms
    whose ordinal does not contain ``plate`` are no item's and are left out.
    """
    total = torch.zeros(batch_size, dtype=torch.float64)
    for tensor, dims, ordinal in terms:
        if plate not in ordinal:
            continue
        tensor = tensor.detach().double()
        others = [i for i, d in enumerate(dims) if d != plate]
        summed = tensor.sum(others) if others else tensor
        broadcast = math.prod(sizes[p] for p in ordinal if p not in dims and p != plate)
        total = total + summed * broadcast
    return total


def _item_costs(problem, keep) -> list:
    """The problem's plain factors of the sites named in ``keep``, as ``(tensor, dims, ordinal)``."""
    return [(c.factor.tensor, c.factor.dims, c.ordinal) for c in problem.costs if c.name in keep]


def _observed(trace) -> set[str]:
    return {
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site["is_observed"]
    }


def log_joint(
    decoded_trace, states: set[str], plate: str, batch_size: int, max_plate_nesting: int
) -> torch.Tensor:
    """``log p(z, x)`` per item (float64 ``[B]``) of the trace of a decoded model, whose
    enumerated sites ``states`` hold the decoded values."""
    problem = trace_stage.build_problem(
        decoded_trace, poutine.Trace(), max_plate_nesting, validate=False
    )
    keep = _observed(decoded_trace) | set(states)
    return per_item(_item_costs(problem, keep), plate, batch_size, problem_sizes(problem))


def log_evidence(model_fn, batch: dict, plate: str, max_plate_nesting: int) -> torch.Tensor:
    """``log p(x)`` per item (float64 ``[B]``): ``model_fn(batch)``'s enumerated sites summed out.

    ``model_fn`` is the model with the guide's latents already replayed (or the bare model).
    """
    model_trace, guide_trace = trace_stage.run_traces(
        AsParallel()(model_fn), lambda *args, **kwargs: None, (batch,), {}, max_plate_nesting
    )
    problem = trace_stage.build_problem(model_trace, guide_trace, max_plate_nesting)
    coupling = sorted(name for name, var in problem.vars.items() if plate not in var.ordinal)
    if coupling:
        raise ValueError(
            f"enumerated site(s) {coupling} lie outside the data plate {plate!r}: they couple "
            "the items, so no item has a probability of its own. Decode with "
            "probabilities=false (states and marginals are still exact)."
        )
    contracted = contracted_terms(problem)
    if any(plate not in ordinal for _, _, ordinal in contracted):  # pragma: no cover - a guard
        raise RuntimeError(
            f"the elimination took the product over the data plate {plate!r}; "
            "per-item evidence would be lost. Please report this model."
        )
    terms = contracted + _item_costs(problem, _observed(model_trace))
    return per_item(terms, plate, len(batch["index"]), problem_sizes(problem))
