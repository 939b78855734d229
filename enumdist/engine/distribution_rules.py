"""Per-distribution rules: the one place that says what the engine knows about a distribution type.

Each entry of :data:`RULES` is a :class:`DistributionRule`, looked up by the exact type of a
site's distribution (a subclass may add state the rule does not know about, so it gets none):

* ``compact_params``: the parameters that are the distribution's only state. Rebuilding it from
  un-expanded copies of them gives the same log-prob, elementwise (see
  :func:`compact_distribution`);
* ``lazy_log_prob``: builds an observed site's masked log-prob as a lazy factor (``lazy.py``), so
  a plate sum becomes an einsum of its parts (see :func:`lazy_log_prob`);
* ``enumerated_table``: builds a model-enumerated site's log-prob over its whole support as a
  parameter table (see :func:`enumerated_table`).

A type without an entry, or an entry without a rule, is evaluated eagerly: exact, only slower.
Adding a distribution is adding an entry here; the trace stage never names a distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist

from enumdist.engine.factors import Factor, compact, compact_shape, name_dims, named_shape
from enumdist.engine.lazy import CategoricalTable, LazyBernoulliLogProb


@dataclass(frozen=True)
class DistributionRule:
    """What the engine may do with one distribution type (see the module docstring).

    ``lazy_log_prob(fn, value, mask, dim_names, describe, singleton_names) -> lazy factor|None``;
    ``enumerated_table(fn, value, var_name, dim_names, describe, singleton_names, mask)
    -> table|None``.
    """

    compact_params: tuple[str, ...] = ()
    lazy_log_prob: Callable | None = None
    enumerated_table: Callable | None = None


def _built_with(fn):
    """(is_logits, the parameter tensor) of a probs- or logits-parameterised distribution."""
    is_logits = fn.__dict__.get("logits") is fn._param
    return is_logits, fn.logits if is_logits else fn.probs


def _bernoulli_lazy(fn, value, mask, dim_names, describe, singleton_names):
    if mask is False:
        return None
    is_logits, param = _built_with(fn)
    names, sizes = named_shape(
        compact_shape(param), dim_names, describe=describe, singleton_names=singleton_names
    )
    param = Factor(compact(param, sizes), tuple(names))

    def named(tensor):
        return name_dims(tensor, dim_names, describe=describe, singleton_names=singleton_names)

    mask_factor = None if mask is None or mask is True else named(mask)
    return LazyBernoulliLogProb(param, named(value.to(param.tensor.dtype)), mask_factor, is_logits)


def _categorical_table(fn, value, var_name, dim_names, describe, singleton_names, mask):
    num_values = fn._num_events
    if value.numel() != num_values:  # expanded support (infer={'expand': True})
        return None
    is_logits, param = _built_with(fn)
    names, sizes = named_shape(
        compact_shape(param)[:-1], dim_names, describe=describe, singleton_names=singleton_names
    )
    if mask is not None:
        mask = name_dims(mask, dim_names, describe=describe, singleton_names=singleton_names)
    return CategoricalTable(
        compact(param, [*sizes, num_values]), (*tuple(names), var_name), is_logits, mask
    )


#: exact distribution type -> what the engine may do with it
RULES: dict[type, DistributionRule] = {
    dist.Bernoulli: DistributionRule(("probs", "logits"), lazy_log_prob=_bernoulli_lazy),
    dist.Categorical: DistributionRule(("probs", "logits"), enumerated_table=_categorical_table),
    dist.Normal: DistributionRule(("loc", "scale")),
    dist.Poisson: DistributionRule(("rate",)),
}

_NO_RULE = DistributionRule()


def rule_for(fn) -> DistributionRule:
    """The rule registered for ``type(fn)`` exactly; an empty rule (all eager) if none is."""
    return RULES.get(type(fn), _NO_RULE)


def compact_distribution(fn):
    """``fn`` rebuilt from un-expanded parameters, or None when that is not known to be exact.

    Plates expand a site's distribution to the full batch shape; evaluating e.g. Bernoulli
    logits on that expanded view would compute ``log`` once per plate element instead of once
    per distinct parameter. This is the hot spot of emission sites in plates.
    """
    names = rule_for(fn).compact_params
    if not names:
        return None
    if hasattr(fn, "_param"):  # probs- or logits-parameterised: keep the one it was built with
        names = tuple(n for n in names if fn.__dict__.get(n) is fn._param)
    params = {n: fn.__dict__[n] for n in names if n in fn.__dict__}
    if not params or all(0 not in p.stride() for p in params.values()):
        return None
    return type(fn)(**{n: compact(p) for n, p in params.items()}, validate_args=False)


def lazy_log_prob(site, dim_names, describe, singleton_names):
    """A lazy masked log-prob for an observed ``site`` if a rule applies, else None (eager)."""
    rule = rule_for(site["fn"]).lazy_log_prob
    if rule is None or site["args"] or site["kwargs"] or not site["is_observed"]:
        return None
    return rule(site["fn"], site["value"], site["mask"], dim_names, describe, singleton_names)


def enumerated_table(site, var_name, dim_names, describe, singleton_names, mask=None):
    """The log-prob table of a model-enumerated ``site`` over its support if a rule applies,
    else None (eager); ``mask`` (a tensor in Pyro's layout) zeroes its log-prob where False."""
    fn = site["fn"]
    rule = rule_for(fn).enumerated_table
    if rule is None or site["args"] or site["kwargs"]:
        return None
    return rule(fn, site["value"], var_name, dim_names, describe, singleton_names, mask)
