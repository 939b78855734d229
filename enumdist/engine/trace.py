"""Trace stage: run a Pyro guide and model under enumeration and turn every site into factors.

This is the only module that knows Pyro's tensor layout (numbered plate dims on the right,
enumeration dims further left, recycled by ``pyro.markov``). It uses Pyro's poutines to run the
programs and hands the rest of the engine a :class:`EnumProblem`: named factors, the plates, and
the enumerated variables, classified the way ``TraceEnum_ELBO`` classifies them:

* *enumerated* model sites enter the elimination with their plain, unscaled, unmasked log-prob;
* other model sites whose log-prob depends on an enumerated variable enter it masked (mask inside
  the log-sum-exp), and one common scale multiplies the contracted result;
* every other model site is a *cost* (scaled and masked log-prob), as are the guide's ``-log q``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro.poutine as poutine
import torch
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.subsample_messenger import _Subsample

from enumdist.engine.distribution_rules import (
    compact_distribution,
    enumerated_table,
    lazy_log_prob,
)
from enumdist.engine.errors import EnumerationError, MemoryBudgetError
from enumdist.engine.factors import name_dims
from enumdist.engine.guide_enum import check_model_enumeration_not_more_global, dice_factor
from enumdist.engine.handlers import EnumRequests
from enumdist.engine.observations import check_observations, site_mask
from enumdist.engine.problem import EnumProblem, EnumVar, ModelTerm, Plate
from enumdist.engine.site_checks import check_markov_history, check_site_shape


class SiteLayout(NamedTuple):
    """Where a site's plates sit: computed once per site, read by every stage of the build."""

    ordinal: frozenset  # plate names
    plate_dims: dict  # dim -> plate name
    plates: dict  # plate name -> Plate
    singletons: frozenset  # plates of size one (kept as dims, see factors.named_shape)


def _layout(site) -> SiteLayout:
    layout = site.get("_enumdist_layout")
    if layout is None:
        frames = [f for f in site["cond_indep_stack"] if f.vectorized]
        plates = {
            f.name: Plate(
                f.name, f.dim, int(f.size), int(f.full_size if f.full_size is not None else f.size)
            )
            for f in frames
        }
        layout = SiteLayout(
            frozenset(plates),
            {f.dim: f.name for f in frames},
            plates,
            frozenset(f.name for f in frames if f.size == 1),
        )
        site["_enumdist_layout"] = layout
    return layout


def _plates_of(site) -> tuple[frozenset, dict[int, str], dict[str, Plate]]:
    layout = _layout(site)
    return layout.ordinal, layout.plate_dims, layout.plates


def _log_prob(site) -> torch.Tensor:
    fn = site["fn"]
    compact = compact_distribution(fn) if not site["args"] and not site["kwargs"] else None
    return (compact or fn).log_prob(site["value"], *site["args"], **site["kwargs"])


def _mask(log_prob: torch.Tensor, mask) -> torch.Tensor:
    if mask is None or mask is True:
        return log_prob
    if mask is False:
        return torch.zeros_like(log_prob)
    return torch.where(mask, log_prob, log_prob.new_zeros(()))


def run_traces(model, guide, args, kwargs, max_plate_nesting: int, guide_wrapper=None):
    """Run ``guide`` then ``model`` (replayed against it) under parallel enumeration.

    Guide enumeration starts at dim ``-1 - max_plate_nesting``; the model continues to the left,
    as in ``TraceEnum_ELBO``. The model trace records the sites that asked for enumeration in
    ``model_trace.enumerate_requests``. ``guide_wrapper`` (a handler) goes outside the guide's
    enumeration, where ``TraceEnum_ELBO`` puts its ``poutine.queue`` for sequential sites.
    """
    first = -1 - max_plate_nesting
    guide_enum = EnumMessenger(first_available_dim=first)
    guide_program = guide_enum(EnumRequests(first, "guide")(guide))
    if guide_wrapper is not None:
        guide_program = guide_wrapper(guide_program)
    guide_trace = poutine.trace(guide_program).get_trace(*args, **kwargs)
    model_enum = EnumMessenger()  # continues the allocator state left by the guide
    requests = EnumRequests(first, "model")
    program = model_enum(requests(model))
    if any(site["type"] == "sample" for site in guide_trace.nodes.values()):
        program = poutine.replay(program, trace=guide_trace)
    model_trace = poutine.trace(program).get_trace(*args, **kwargs)
    model_trace.enumerate_requests = requests.requested  # type: ignore[attr-defined]
    return model_trace, guide_trace


def _sample_sites(trace) -> list:
    """``[(name, site)]`` of the sample sites (not subsampling ones), listed once per trace."""
    cached = getattr(trace, "_enumdist_sample_sites", None)
    if cached is None or cached[0] != len(trace.nodes):
        sites = [
            (name, site)
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and type(site["fn"]) is not _Subsample
        ]
        cached = trace._enumdist_sample_sites = (len(trace.nodes), sites)
    return cached[1]


def collect_vars(model_trace, guide_trace, max_plate_nesting: int):
    """Find enumerated variables and plates; check layout; map Pyro's dim ids to var names."""
    plates: dict[str, Plate] = {}
    variables: dict[str, EnumVar] = {}
    id_to_var: dict[int, str] = {}
    for who, trace in (("guide", guide_trace), ("model", model_trace)):
        for name, site in _sample_sites(trace):
            ordinal, _, site_plates = _plates_of(site)
            for p in site_plates.values():
                old = plates.setdefault(p.name, p)
                if old.dim != p.dim:
                    raise EnumerationError(
                        f"plate '{p.name}' is used at dim {old.dim} and at dim {p.dim} (site "
                        f"'{name}'); give it one explicit dim=."
                    )
            enum_dim = site["infer"].get("_enumerate_dim")
            if who == "model" and name in guide_trace.nodes:
                continue  # replayed from the guide
            if enum_dim is None:
                continue
            var_id = site["infer"]["_dim_to_id"][enum_dim]
            id_to_var[var_id] = name
            variables[name] = EnumVar(
                name=name,
                size=int(site["value"].shape[enum_dim - site["fn"].event_dim]),
                ordinal=ordinal,
                enum_dim=enum_dim,
                support=site["value"],
                in_guide=who == "guide",
                event_dim=site["fn"].event_dim,
            )
    return plates, variables, id_to_var


def _dim_names(site, id_to_var, max_plate_nesting) -> dict[int, str]:
    names = dict(_layout(site).plate_dims)
    for dim, var_id in site["infer"].get("_dim_to_id", {}).items():
        if dim >= -max_plate_nesting:
            continue
        if var_id in id_to_var:
            names[dim] = id_to_var[var_id]
    return names


def _broadcast(a: tuple, b: tuple) -> tuple:
    """Broadcast shape (``torch.broadcast_shapes`` is slow in a per-site hot path)."""
    if len(a) < len(b):
        a, b = b, a
    b = (1,) * (len(a) - len(b)) + b
    return tuple(x if y == 1 else y for x, y in zip(a, b))


def _preflight(site, budget, who):
    """Refuse a site whose log-prob tensor would exceed ``budget`` bytes, before computing it."""
    if budget is None:
        return
    value, fn = site["value"], site["fn"]
    batch = value.shape[: value.dim() - fn.event_dim]
    shape = _broadcast(tuple(batch), tuple(fn.batch_shape))
    nbytes = math.prod(shape) * (value.element_size() if value.is_floating_point() else 8)
    if nbytes > budget:
        raise MemoryBudgetError(
            f"{who} site '{site['name']}' would produce a log-prob tensor of shape "
            f"{tuple(shape)} ({nbytes / 2**30:.2f} GiB), over memory_budget="
            f"{budget / 2**30:.2f} GiB. Too many enumerated variables meet in this site: "
            "limit pyro.markov history, reduce the number of states, or raise memory_budget."
        )


def model_sequential_sites(model_trace, guide_trace) -> list[str]:
    """Model sites asking for sequential enumeration (Pyro refuses those; we honour them)."""
    return [
        name
        for name, site in _sample_sites(model_trace)
        if site["infer"].get("enumerate") == "sequential"
        and not site["is_observed"]
        and name not in guide_trace.nodes
    ]


def build_problem(
    model_trace,
    guide_trace,
    max_plate_nesting: int,
    validate: bool = True,
    memory_budget=None,
    mask_enumerated: bool = False,
    remember_valid_data: bool = False,
):
    """Classify every site of the two traces into factors of an :class:`EnumProblem`.

    ``mask_enumerated=True`` applies masks to enumerated sites too, as ``infer_discrete`` does
    (``TraceEnum_ELBO`` ignores them there). ``validate`` runs :func:`check_sites` first
    (``remember_valid_data``: see :func:`~enumdist.engine.observations.check_observations`).
    ``memory_budget`` (bytes) refuses a site whose log-prob tensor would exceed it.
    """
    plates, variables, id_to_var = collect_vars(model_trace, guide_trace, max_plate_nesting)
    problem = EnumProblem(plates, variables, model_trace=model_trace, guide_trace=guide_trace)
    check_model_enumeration_not_more_global(variables)
    sum_vars = problem.sum_vars
    if validate:
        check_sites(model_trace, guide_trace, max_plate_nesting, remember_valid_data)
    for name, site in _sample_sites(model_trace):
        _preflight(site, memory_budget, "model")
        dim_names = _dim_names(site, id_to_var, max_plate_nesting)
        if name in variables and not variables[name].in_guide:
            _add_enumerated_site(problem, name, site, dim_names, mask_enumerated)
        else:
            _add_model_site(problem, name, site, dim_names, sum_vars)
    for name, site in _sample_sites(guide_trace):
        _preflight(site, memory_budget, "guide")
        dim_names = _dim_names(site, id_to_var, max_plate_nesting)
        _add_guide_site(problem, name, site, dim_names, name in variables)
    return problem


def _add_enumerated_site(problem, name, site, dim_names, mask_enumerated):
    """A model-enumerated site: its plain log-prob (no scale; masked only for decoding), as a
    table where a distribution rule gives one (see ``distribution_rules.py``)."""
    layout = _layout(site)
    describe = f"model site '{name}'"
    table = (
        None
        if mask_enumerated and site["mask"] is False
        else enumerated_table(
            site,
            name,
            dim_names,
            describe,
            layout.singletons,
            site_mask(site) if mask_enumerated else None,
        )
    )
    if table is None:
        log_p = _log_prob(site)
        log_p = _mask(log_p, site["mask"]) if mask_enumerated else log_p
        table = name_dims(log_p, dim_names, describe=describe, singleton_names=layout.singletons)
    problem.log_factors.append(ModelTerm(name, table, layout.ordinal, site["scale"]))


def _add_model_site(problem, name, site, dim_names, sum_vars):
    """Any other model site: its masked log-prob, a log-factor if it mentions an enumerated
    variable (lazy where a distribution rule allows), else a cost."""
    layout = _layout(site)
    ordinal, scale = layout.ordinal, site["scale"]
    describe = f"model site '{name}'"
    lazy = lazy_log_prob(site, dim_names, describe, layout.singletons)
    if lazy is not None and sum_vars.intersection(lazy.dims):
        problem.log_factors.append(ModelTerm(name, lazy, ordinal, scale))
        return
    masked = _mask(_log_prob(site), site["mask"])
    factor = name_dims(masked, dim_names, describe=describe, singleton_names=layout.singletons)
    if sum_vars.intersection(factor.dims):
        problem.log_factors.append(ModelTerm(name, factor, ordinal, scale))
    else:
        problem.costs.append(ModelTerm(name, factor, ordinal, scale))


def _add_guide_site(problem, name, site, dim_names, enumerated):
    """A guide site: its masked ``log q`` as a guide cost, and its Dice weight and
    denominator (see ``guide_enum.dice_factor``)."""
    layout = _layout(site)
    ordinal = layout.ordinal

    def named(tensor):
        return name_dims(
            tensor, dim_names, describe=f"guide site '{name}'", singleton_names=layout.singletons
        )

    log_q = _log_prob(site)
    masked_log_q = _mask(log_q, site["mask"])
    problem.guide_costs.append(ModelTerm(name, named(masked_log_q), ordinal, site["scale"]))
    weight, log_denominator = dice_factor(site, log_q, masked_log_q, enumerated)
    if weight is not None:
        problem.dice_factors.append(ModelTerm(name, named(weight), ordinal))
    if log_denominator:
        problem.dice_denominators[ordinal] = (
            problem.dice_denominators.get(ordinal, 0.0) + log_denominator
        )


def check_sites(model_trace, guide_trace, max_plate_nesting: int, remember_valid_data=False):
    """Every site's shape against its plates, ``pyro.markov`` dim conflicts, and the model's
    observations (NaN, support): what must hold before any log-prob is computed."""
    for who, trace in (("guide", guide_trace), ("model", model_trace)):
        last_site_at_dim: dict[int, str] = {}
        for _, site in _sample_sites(trace):
            check_site_shape(site, _layout(site).plates, max_plate_nesting, who)
            check_markov_history(site, who, last_site_at_dim)
    check_observations(
        (site for _, site in _sample_sites(model_trace) if site["is_observed"]),
        remember_valid_data=remember_valid_data,
    )


def trace_params(*traces) -> list:
    """Unconstrained parameter tensors seen in ``traces``, once each, ordered by name."""
    params: dict[str, torch.Tensor] = {}
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] == "param":
                value = site["value"]
                params.setdefault(
                    name, value.unconstrained() if hasattr(value, "unconstrained") else value
                )
    return [params[k] for k in sorted(params)]
