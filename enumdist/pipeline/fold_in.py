"""Held-out evaluation of a model whose guide has per-item latents: fold them in.

A guide latent inside the data plate (the :class:`~enumdist.models.TopicModel`'s per-document
topic weights under ``AutoDelta``) is fitted to the *training* items. A held-out item has none of
its own: replaying the trained guide on another split would pair items with other items' latents,
or fail on the plate's size. Evaluation instead fits a fresh guide to the held-out batch with the
model's own parameters frozen ("fold-in", Wallach et al. 2009), then reports the same ELBO the
training items get. The fresh guide starts from its init strategy, so the result is
deterministic; under DDP every rank runs the same number of steps (the sharded ELBO's
collectives line up) and fits its own items.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

#: ``fold_in`` config defaults (``conf/train.yaml`` states the same): Adam steps and learning rate
DEFAULTS = {"steps": 50, "lr": 0.05}


def guide_latents(model, guide, batch: dict) -> tuple[list[str], list[str]]:
    """``(per-item latents, global latents)`` the guide samples: per item means inside the
    model's data plate (``model.shard_plate``)."""
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(guide).get_trace(batch)
    local, shared = [], []
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
            in_plate = any(f.name == model.shard_plate for f in site["cond_indep_stack"])
            (local if in_plate else shared).append(name)
    return local, shared


def check_fold_in(model, guide, batch: dict) -> list[str]:
    """The guide's per-item latents (empty: held-out items can reuse the trained guide).

    A guide with per-item *and* global latents cannot be folded in (a fresh guide would forget
    the trained globals): that raises, naming both.
    """
    local, shared = guide_latents(model, guide, batch)
    if local and shared:
        raise ValueError(
            f"guide: latents {local} are per item of plate {model.shard_plate!r} and {shared} are "
            "global; held-out evaluation refits per-item latents with a fresh guide, which would "
            "drop the trained globals. Make the globals model parameters (PyroParam) or give the "
            "model its own guide."
        )
    return local


def fold_in(
    model, guide_factory: Callable[[Any], Any], elbo, batch: dict, steps: int, lr: float
) -> Any:
    """A fresh ``guide_factory(model)`` fitted to ``batch`` by ``steps`` Adam steps (learning
    rate ``lr``) on ``elbo``, the model's parameters left untouched (not even their ``.grad``).

    Callable from Lightning's evaluation loop: it leaves ``inference_mode`` / ``no_grad`` for
    the fit and clones the batch's tensors out of inference mode.
    """
    if steps < 1:
        raise ValueError(
            f"fold_in.steps must be >= 1 to fit held-out per-item latents, got {steps}"
        )
    with torch.inference_mode(False), torch.enable_grad():
        batch = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        guide = guide_factory(model)
        with poutine.block():
            guide(batch)  # autoguides create their parameters on the first call
        params = [p for p in guide.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                f"fold-in: a fresh {type(guide).__name__} has no parameters of its own to fit "
                "to held-out items (a model's own guide keeps them in the model, which fold-in "
                "leaves frozen); use an autoguide (guide=auto_delta) or evaluate the training split"
            )
        optimizer = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            loss = elbo.differentiable_loss(model.model, guide, batch)
            for param, grad in zip(params, torch.autograd.grad(loss, params)):
                param.grad = grad
            optimizer.step()
    return guide
