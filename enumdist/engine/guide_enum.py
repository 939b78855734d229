"""Guide-side enumeration: the weight each guide site puts on the costs, and sequential runs.

Pyro's ``TraceEnum_ELBO`` treats a guide site in one of four ways (``Dice`` in
``pyro/infer/util.py``); :func:`dice_factor` gives the same log-weight for each:

=====================================  ====================================================
guide site                             log dice factor (masked, never scaled)
=====================================  ====================================================
``"enumerate": "parallel"``            ``log q`` over its own enumeration dim
``"parallel"`` + ``num_samples=n``     ``log q - log q.detach() - log n`` over a dim of n
                                       samples (Monte Carlo enumeration; any distribution)
``"enumerate": "sequential"``          ``log q(value)`` of this run's value; costs that the
                                       site does not reach are divided by its support size
sampled, not reparameterised           ``log q - log q.detach()`` (score function)
sampled, reparameterised               none
=====================================  ====================================================

Sequential guide sites are run as Pyro runs them: the guide and model once per value (per
combination of values of several such sites), each run's ELBO weighted by the dice factors
above, and the runs summed (:func:`sequential_guide_traces`). That is exact, gradients
included, and keeps Pyro's semantics where the program's structure depends on the value.
"""

from __future__ import annotations

import math
from queue import LifoQueue

import pyro.poutine as poutine
import torch
from pyro.infer.enum import iter_discrete_escape, iter_discrete_extend
from pyro.poutine import Trace

from enumdist.engine.errors import EnumerationError


def is_sequential(site) -> bool:
    """A latent site that Pyro enumerates by re-running the guide once per value (or sample)."""
    return site["infer"].get("enumerate") == "sequential" and not site["is_observed"]


def has_sequential_sites(guide_trace) -> bool:
    return any(
        site["type"] == "sample" and is_sequential(site) for site in guide_trace.nodes.values()
    )


def num_samples(site):
    """``n`` of a Monte Carlo enumerated site (``{"enumerate": ..., "num_samples": n}``)."""
    if site["infer"].get("enumerate"):
        return site["infer"].get("num_samples")
    return None


def dice_factor(site, log_q, masked_log_q, enumerated: bool):
    """``(log weight or None, log denominator)`` of a guide site, as in the table above.

    ``log_q`` is the site's log-prob, ``masked_log_q`` the same with the site's mask applied
    (the score function is masked and never scaled, as in Pyro's ``ScoreParts``);
    ``enumerated`` says the site has an enumeration dim. A sequential site with
    ``num_samples=n`` is re-run once per sample and weighs each run by ``1/n``.
    """
    fn = site["fn"]
    score = None if fn.has_rsample else masked_log_q
    n = num_samples(site)
    if n is not None:
        weight = (score - score.detach()) if score is not None else torch.zeros_like(log_q)
        return weight - math.log(n), 0.0
    if enumerated:
        return masked_log_q, 0.0
    if is_sequential(site):
        return masked_log_q, math.log(site["infer"]["_enum_total"])
    if score is not None:
        return score - score.detach(), 0.0
    return None, 0.0


def check_model_enumeration_not_more_global(variables) -> None:
    """Refuse, as Pyro does, a guide-enumerated site in a plate some model-enumerated site is not in.

    ``variables`` maps names to :class:`~enumdist.engine.trace.EnumVar`. The guide's weights
    are taken per plate element, which is only right when every model-enumerated variable lives
    inside the guide-enumerated one's plates.
    """
    model_ordinals = [v.ordinal for v in variables.values() if not v.in_guide]
    if not model_ordinals:
        return
    common = frozenset.intersection(*model_ordinals)
    for name, var in variables.items():
        outside = sorted(var.ordinal - common) if var.in_guide else []
        if outside:
            model_sites = sorted(
                n for n, v in variables.items() if not v.in_guide and outside[0] not in v.ordinal
            )
            raise EnumerationError(
                "Expected model enumeration to be no more global than guide enumeration, but "
                f"found model enumeration sites {model_sites} upstream of guide site '{name}' in "
                f"plate('{outside[0]}'). Enumerate those sites in the guide too, or '{name}' in "
                "the model (hide it from the guide)."
            )


def sequential_guide_traces(run_traces, model, guide, args, kwargs, max_plate_nesting):
    """``[(model_trace, guide_trace)]``, one per combination of sequential guide values.

    ``run_traces`` is :func:`enumdist.engine.trace.run_traces`; the guide is re-run under
    Pyro's ``poutine.queue`` exactly as ``TraceEnum_ELBO`` re-runs it (last-in first-out, sites
    before a sequential site kept from the partial trace), so with one seed the runs see the
    same random draws as Pyro's.
    """
    queue = LifoQueue()
    queue.put(Trace())

    def wrap(program):
        return poutine.queue(
            program, queue, escape_fn=iter_discrete_escape, extend_fn=iter_discrete_extend
        )

    pairs = []
    while not queue.empty():
        pairs.append(run_traces(model, guide, args, kwargs, max_plate_nesting, guide_wrapper=wrap))
    return pairs
