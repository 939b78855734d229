"""Decode one batch: MAP (temperature 0) or posterior samples (temperature 1) of the enumerated
sites with ``enumdist.infer_discrete``, each item's probabilities (:mod:`.scores`), optionally
posterior marginals with ``enumdist.EnumELBO.compute_marginals``, gathered per hidden state and
per position.
"""

from __future__ import annotations

import pyarrow as pa
import pyro.distributions as dist
import torch
from pyro import poutine

import enumdist
from enumdist.decoding import scores
from enumdist.models.base import EnumModel


def gather_states(
    sites: dict[str, list[str]],
    values: dict[str, torch.Tensor],
    batch_size: int,
    event_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Stack each state's sites (in order) into ``[B, positions]`` (values) or
    ``[B, positions, event_size]`` (marginal probabilities)."""
    gathered = {}
    for state, names in sites.items():
        missing = [n for n in names if n not in values]
        if missing:
            raise KeyError(
                f"state {state!r}: sites {missing[:5]} were not decoded; does the "
                "model's state_sites(batch) match its sample site names?"
            )
        parts = []
        for name in names:
            value = values[name]
            shape = (batch_size, -1) if event_size is None else (batch_size, -1, event_size)
            if value.numel() % (batch_size * (event_size or 1)):
                raise ValueError(
                    f"site {name!r}: shape {tuple(value.shape)} does not hold {batch_size} items"
                )
            parts.append(value.reshape(shape))
        gathered[state] = torch.cat(parts, dim=1)
    return gathered


def _probs(marginal) -> torch.Tensor:
    """Probabilities per value, ``[..., D]`` (compute_marginals gives a Bernoulli site a
    Bernoulli marginal, as Pyro does: its D = 2 values are 0 and 1)."""
    if isinstance(marginal, dist.Bernoulli):
        return torch.stack([1 - marginal.probs, marginal.probs], -1)
    return marginal.probs if hasattr(marginal, "probs") else marginal


@torch.no_grad()
def decode_batch(
    model: EnumModel,
    guide,
    batch: dict,
    *,
    temperature: int = 0,
    marginals: bool = False,
    probabilities: bool = False,
    shard_plates: list[str] | None = None,
    items_in_step: int | None = None,
) -> dict[str, torch.Tensor]:
    """-> ``{state: LongTensor[B, positions]}``; with ``probabilities`` also float64 ``[B]``
    ``log_joint`` (``log p(z, x)`` of the decoded path), ``log_evidence`` (``log p(x)``) and
    ``path_posterior`` (``p(z | x)``); with ``marginals`` also ``{f"{state}_marginals": [B,
    positions, D]}`` and ``{f"{state}_confidence": [B, positions]}``, the posterior probability
    of the decoded state at each position.

    ``guide`` (or ``None``) supplies the non-enumerated latents, which the decoded model replays.
    Marginals are the posterior of the decoded items themselves: the data plate's subsample
    scale is set to 1 (``num_total`` = ``items_in_step``, the items of this step over all ranks,
    default this batch's), not the split's ``num_total / B`` used for training. Probabilities
    are per item, so each rank computes its own items' alone (see :mod:`.scores`).
    """
    batch_size = len(batch["index"])
    model_fn = model.model
    if guide is not None:
        model_fn = poutine.replay(model_fn, trace=poutine.trace(guide).get_trace(batch))
    decoded = enumdist.infer_discrete(
        model_fn,
        first_available_dim=-1 - model.max_plate_nesting,
        temperature=temperature,
        shard_plates=shard_plates,
    )
    trace = poutine.trace(decoded).get_trace(batch)
    values = {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    sites = model.state_sites(batch)
    out = {k: v.long() for k, v in gather_states(sites, values, batch_size).items()}
    if probabilities:
        out.update(_path_probabilities(model, model_fn, trace, batch))
    if marginals:
        out.update(_marginal_columns(model, guide, batch, out, sites, shard_plates, items_in_step))
    return out


def _path_probabilities(model, model_fn, trace, batch: dict) -> dict[str, torch.Tensor]:
    """``log_joint``, ``log_evidence`` and ``path_posterior`` of each item's decoded path."""
    batch_size = len(batch["index"])
    states = {
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and site["infer"].get("enumerate")
    }
    log_joint = scores.log_joint(
        trace, states, model.shard_plate, batch_size, model.max_plate_nesting
    )
    log_evidence = scores.log_evidence(model_fn, batch, model.shard_plate, model.max_plate_nesting)
    return {
        "log_joint": log_joint,
        "log_evidence": log_evidence,
        "path_posterior": (log_joint - log_evidence).exp(),
    }


def _marginal_columns(
    model, guide, batch: dict, decoded: dict, sites: dict, shard_plates, items_in_step
) -> dict[str, torch.Tensor]:
    """``{state}_marginals`` and ``{state}_confidence`` (the decoded state's marginal) per
    state, from the posterior of this step's items alone (subsample scale 1)."""
    batch_size = len(batch["index"])
    elbo = enumdist.EnumELBO(
        max_plate_nesting=model.max_plate_nesting,
        **({"shard_plates": shard_plates} if shard_plates else {}),
    )
    unscaled = dict(batch, num_total=items_in_step or batch_size)
    probs = {
        k: _probs(v)
        for k, v in elbo.compute_marginals(
            model.model, guide or (lambda batch: None), unscaled
        ).items()
    }
    out = {}
    for state, names in sites.items():
        event_size = probs[names[0]].shape[-1]
        state_marginals = gather_states({state: names}, probs, batch_size, event_size)[state]
        out[f"{state}_marginals"] = state_marginals.float()
        out[f"{state}_confidence"] = (
            state_marginals.gather(-1, decoded[state].unsqueeze(-1)).squeeze(-1).float()
        )
    return out


def to_table(
    batch: dict, decoded: dict[str, torch.Tensor], names: list[str | None] | None = None
) -> pa.Table:
    """One row per item: ``index`` (its position in the split), ``name`` (its own identity, or
    null where the data names none), ``length``, one scalar column per ``[B]`` tensor and one
    list column per ``[B, positions, ...]`` tensor, cut to the item's ``lengths`` when the batch
    has them (padding is not decoded output)."""
    index = batch["index"].tolist()
    positions = max((t.shape[1] for t in decoded.values() if t.dim() > 1), default=0)
    lengths = batch["lengths"].tolist() if "lengths" in batch else [positions] * len(index)
    columns = {
        "index": pa.array(index, pa.int64()),
        "name": pa.array(names if names is not None else [None] * len(index), pa.string()),
        "length": pa.array(lengths, pa.int64()),
    }
    for name, tensor in decoded.items():
        if tensor.dim() == 1:
            columns[name] = pa.array(tensor.tolist(), pa.float64())
            continue
        rows = [row[:length].tolist() for row, length in zip(tensor, lengths)]
        columns[name] = pa.array(rows)
    return pa.table(columns)
