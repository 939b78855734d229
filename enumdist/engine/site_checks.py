"""Site checks: what Pyro's validation refuses, refused here too -- naming the site and the fix.

* :func:`check_site_shape` -- a site's value must broadcast with its distribution's batch shape,
  whose plate dims carry the plates' sizes (data of 100 points in ``pyro.plate("data", 60)``),
  and observed data must not reach left of ``max_plate_nesting`` into the enumeration dims;
* :func:`check_markov_history` -- a site whose distribution already varies along the dim its
  own enumeration is given depends on a variable whose dim ``pyro.markov`` recycled;
* :func:`check_model_guide_match` -- Pyro's model/guide agreement rules, with its warnings
  ("Found vars in model but not guide", ...) where Pyro warns and errors where it raises.

The per-site checks read shapes only (no log-prob is computed): they run on every call.
"""

from __future__ import annotations

import warnings

from enumdist.engine.errors import (
    MarkovHistoryError,
    ModelGuideMismatchError,
    SiteShapeError,
)


def _describe_dim(pos: int, plates, max_plate_nesting: int) -> str:
    """What lives at batch dim ``pos`` of a site: a plate, an enumeration dim, or nothing."""
    for plate in plates.values():
        if plate.dim == pos:
            sub = "" if plate.full_size == plate.size else f" (subsampled from {plate.full_size})"
            return f"plate '{plate.name}'{sub}"
    if pos < -max_plate_nesting:
        return f"an enumeration dim (left of max_plate_nesting={max_plate_nesting})"
    return "no plate"


def _advice(pos: int, plates, max_plate_nesting: int, data_size: int) -> str:
    for plate in plates.values():
        if plate.dim == pos:
            if plate.full_size != plate.size:
                return (
                    f"index the data with the plate's subsample indices (`with "
                    f"pyro.plate('{plate.name}', {plate.full_size}, subsample_size="
                    f"{plate.size}) as idx: ... obs=data[idx]`)"
                )
            return (
                f"give the plate the data's size (pyro.plate('{plate.name}', {data_size})), "
                "or permute the data so that this dim holds the plate's items"
            )
    if pos < -max_plate_nesting:
        return (
            "declare every data dim with pyro.plate(..., dim=) (raising max_plate_nesting), "
            "or move it into the event with .to_event()"
        )
    return (
        f"enclose the site in a pyro.plate(..., dim={pos}), .to_event() the distribution, or "
        ".permute() the data dims"
    )


def check_site_shape(site, plates: dict, max_plate_nesting: int, who: str) -> None:
    """Refuse a site whose value and batch shape cannot belong to its plates.

    ``plates`` maps the site's plate names to :class:`~enumdist.engine.trace.Plate`. Raises
    :class:`SiteShapeError` (a ``ValueError``, as Pyro's "not broadcastable") naming the site,
    the dim, the plate and both sizes.
    """
    fn, value = site["fn"], site["value"]
    shape = getattr(value, "shape", None)
    if shape is None:
        return
    batch = shape[: len(shape) - fn.event_dim]
    expected = fn.batch_shape
    for pos in range(-1, -1 - min(len(batch), len(expected)), -1):
        got, want = batch[pos], expected[pos]
        if got != want and got != 1 and want != 1:
            raise SiteShapeError(
                f"at {who} site '{site['name']}', value is not broadcastable with batch_shape: "
                f"value batch shape {tuple(batch)} vs distribution batch shape "
                f"{tuple(expected)}. At dim {pos} the value has size {got} where the "
                f"distribution has size {want} ({_describe_dim(pos, plates, max_plate_nesting)}): "
                f"{_advice(pos, plates, max_plate_nesting, got)}."
            )
    if (
        not site["is_observed"]
        or type(fn).__name__ == "Unit"  # pyro.factor: no data
        or max_plate_nesting == float("inf")
    ):
        return
    for pos in range(-len(batch), -int(max_plate_nesting)):
        if batch[pos] != 1:
            raise SiteShapeError(
                f"at {who} site '{site['name']}', invalid log_prob shape: the observed value "
                f"has shape {tuple(shape)}, whose dim {pos} (size {batch[pos]}) lies left of "
                f"max_plate_nesting={max_plate_nesting}, where enumerated variables live; it "
                f"would be confused with one. "
                f"{_advice(pos, plates, max_plate_nesting, batch[pos]).capitalize()}."
            )


def check_markov_history(site, who: str, last_site_at_dim: dict) -> None:
    """Refuse a site enumerated at a dim along which its distribution already varies.

    Its parameters then depend on an earlier variable that ``pyro.markov`` put at the same dim,
    because the ``history`` given is shorter than the model's dependencies: the two would be
    confused (a diagonal instead of a product). ``last_site_at_dim`` (dim -> name of the last
    site enumerated there, updated here) names that earlier site.
    """
    enum_dim = site["infer"].get("_enumerate_dim")
    if enum_dim is None:
        return
    batch = site["fn"].batch_shape
    if len(batch) >= -enum_dim and batch[enum_dim] != 1:
        earlier = last_site_at_dim.get(enum_dim)
        culprit = f" (last used by site '{earlier}')" if earlier else ""
        raise MarkovHistoryError(
            f"Enumeration dim conflict at {who} site '{site['name']}': its distribution depends "
            f"on a variable at enumeration dim {enum_dim}{culprit}, which pyro.markov recycled "
            f"for this site. Try increasing pyro.markov history size: history must be at least "
            "the longest lag of any dependency (2 for a second-order chain)."
        )
    last_site_at_dim[enum_dim] = site["name"]


def _is_subsample(site) -> bool:
    return type(site["fn"]).__name__ == "_Subsample"


def check_model_guide_match(model_trace, guide_trace, max_plate_nesting, sequential=()) -> None:
    """Pyro's model/guide agreement (``pyro.util.check_model_guide_match``), our messages.

    Warns, as Pyro does, about latent model sites the guide neither samples nor has enumerated
    ("Found vars in model but not guide"), guide sites missing from the model, auxiliary sites in
    the model, and plates of the guide the model lacks. Raises where Pyro raises: event dims or
    shapes that differ at a site, and a guide ``pyro.factor`` without ``has_rsample``.
    ``sequential`` names model sites under sequential enumeration (which Pyro refuses and
    enumdist computes): they count as enumerated.
    """
    guide_sites = {
        n: s for n, s in guide_trace.nodes.items() if s["type"] == "sample" and not _is_subsample(s)
    }
    model_sites = {
        n: s
        for n, s in model_trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not _is_subsample(s)
    }
    _warn_unmatched_sites(model_sites, guide_sites, sequential)
    for name in sorted(model_sites.keys() & guide_sites.keys()):
        _check_same_shape(name, model_sites[name], guide_sites[name], max_plate_nesting)
    _warn_guide_only_plates(model_trace, guide_trace)
    _check_guide_factors(guide_sites)


# The helpers below warn with stacklevel=3: the warning points at check_model_guide_match's
# caller, as Pyro's does.


def _warn_unmatched_sites(model_sites, guide_sites, sequential) -> None:
    """Auxiliary sites in the model, guide sites the model lacks, latent model sites that are
    neither in the guide nor enumerated (in parallel, or sequentially: ``sequential``)."""
    aux = {n for n, s in guide_sites.items() if s["infer"].get("is_auxiliary")}
    enumerated = {
        n
        for n, s in model_sites.items()
        if n not in guide_sites
        and (s["infer"].get("_enumerate_dim") is not None or n in sequential)
    }
    if aux & model_sites.keys():
        warnings.warn(
            f"Found auxiliary vars in the model: {aux & model_sites.keys()}", stacklevel=3
        )
    if not guide_sites.keys() <= model_sites.keys() | aux:
        warnings.warn(
            "Found non-auxiliary vars in guide but not model, consider marking these "
            "infer={'is_auxiliary': True}:\n"
            f"{guide_sites.keys() - aux - model_sites.keys()}",
            stacklevel=3,
        )
    uncovered = model_sites.keys() - guide_sites.keys() - enumerated
    if uncovered:
        warnings.warn(
            f"Found vars in model but not guide: {uncovered}. They are sampled from "
            "the model's prior; sample them in the guide, or mark discrete ones "
            "infer={'enumerate': 'parallel'}.",
            stacklevel=3,
        )


def _warn_guide_only_plates(model_trace, guide_trace) -> None:
    """Subsampled plates of the guide that the model does not have."""
    model_plates = {
        n for n, s in model_trace.nodes.items() if s["type"] == "sample" and _is_subsample(s)
    }
    guide_plates = {
        n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and _is_subsample(s)
    }
    if not guide_plates <= model_plates:
        warnings.warn(
            f"Found plate statements in guide but not model: {guide_plates - model_plates}",
            stacklevel=3,
        )


def _check_guide_factors(guide_sites) -> None:
    """A guide ``pyro.factor`` must say whether it comes from reparameterised sampling."""
    for name, site in guide_sites.items():
        if (
            site["infer"].get("is_auxiliary")
            and type(site["fn"]).__name__ == "Unit"
            and "has_rsample" not in site["fn"].__dict__
        ):
            raise ModelGuideMismatchError(
                f'At guide site pyro.factor("{name}",...), missing specification of '
                "has_rsample: pass has_rsample=True if the factor comes from reparameterised "
                "sampling, else has_rsample=False (the guide's factor then gets a "
                "score-function gradient)."
            )


def _check_same_shape(name, model_site, guide_site, max_plate_nesting) -> None:
    model_fn, guide_fn = model_site["fn"], guide_site["fn"]
    if model_fn.event_dim != guide_fn.event_dim:
        raise ModelGuideMismatchError(
            f"Model and guide event_dims disagree at site '{name}': {model_fn.event_dim} vs "
            f"{guide_fn.event_dim}; use the same .to_event() in both."
        )
    model_shape = model_fn.shape(*model_site["args"], **model_site["kwargs"])
    guide_shape = guide_fn.shape(*guide_site["args"], **guide_site["kwargs"])
    if model_shape == guide_shape:
        return
    if max_plate_nesting != float("inf"):  # enumeration dims (left of the plates) broadcast
        model_keep = int(max_plate_nesting) + model_fn.event_dim
        guide_keep = int(max_plate_nesting) + guide_fn.event_dim
        model_shape = model_shape[max(0, len(model_shape) - model_keep) :]
        guide_shape = guide_shape[max(0, len(guide_shape) - guide_keep) :]
    longest = max(len(model_shape), len(guide_shape))
    padded_model = (1,) * (longest - len(model_shape)) + tuple(model_shape)
    padded_guide = (1,) * (longest - len(guide_shape)) + tuple(guide_shape)
    if padded_model != padded_guide:
        raise ModelGuideMismatchError(
            f"Model and guide shapes disagree at site '{name}': {tuple(model_shape)} vs "
            f"{tuple(guide_shape)}; give the guide's distribution the model's batch and event "
            "shape (same plates, same .to_event())."
        )
