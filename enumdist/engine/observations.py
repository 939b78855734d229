"""Observation checks: refuse NaN or out-of-support data, naming the site, at little cost.

A python-loop model observes one slice of its data per site, hundreds of sites per step; one
check per site would cost more than the rest of the step. Sites are grouped (same support,
shape and mask shape) and checked at once: through the data tensor they all view, when there is
one, else stacked; only a failing group is searched site by site, for the error message.

By default every call checks its data afresh (as Pyro's validation does): data can change
behind torch's version counter (through ``.data`` or a shared numpy array).
``remember_valid_data=True`` (``EnumELBO(validate="first")``) skips a data tensor found valid
until its version counter moves.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch.distributions import constraints

from enumdist.engine.errors import InvalidArgumentError


def _observation_error(site, problem: str) -> InvalidArgumentError:
    fn = site["fn"]
    name = f"observed site '{site['name']}'"
    within = f"expected value argument to be within the support {fn.support} of {type(fn).__name__}"
    if problem == "masked nan":
        return InvalidArgumentError(
            f"{name} contains NaN values, under poutine.mask ({within}). Masking does not make "
            "NaN data safe: Pyro's validation refuses it too, and the gradient through a masked "
            "NaN is NaN. Fill the masked-out entries with any value in the support (e.g. "
            "torch.where(mask, data, 0.)) and keep the mask."
        )
    if problem == "nan":
        return InvalidArgumentError(
            f"{name} contains NaN values ({within}); drop those entries, or fill them with any "
            "value in the support and mask them out with poutine.mask."
        )
    return InvalidArgumentError(
        f"{name} has values outside the support {fn.support} of its {type(fn).__name__} "
        f"distribution ({within}); fix the data (or mask those entries)."
    )


def site_mask(site):
    """The site's mask tensor, or None when it is absent or a constant."""
    mask = site["mask"]
    return None if mask is None or mask is True or mask is False else mask


def constraint_key(constraint) -> tuple:
    """Hashable identity of a constraint *value* (Categorical builds a new one per instance)."""
    attributes = tuple(sorted(vars(constraint).items()))
    if any(torch.is_tensor(v) for _, v in attributes):  # tensors hash by id, compare by value
        return (type(constraint), id(constraint))
    key = (type(constraint), attributes)
    try:
        hash(key)
    except TypeError:  # unhashable attributes: group by the object itself
        return (type(constraint), id(constraint))
    return key


def _left_pad(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Insert singleton dims after the leading (stack) dim until ``x`` has ``ndim`` dims."""
    return x.reshape(x.shape[:1] + (1,) * (ndim - x.dim()) + x.shape[1:])


def all_in_support(support, values: torch.Tensor) -> bool:
    """``bool(support.check(values).all())``, in fewer passes over large data for the common
    supports (NaN lies outside every support, as in torch's checks)."""
    if (
        values.is_floating_point()
        and values.numel()
        and support in (constraints.boolean, constraints.real)
    ):
        low, high = (float(v) for v in torch.aminmax(values))  # NaN propagates: one fast pass
        if support is constraints.real:
            return not (math.isnan(low) or math.isnan(high))
        # in [0, 1], x * x == x holds for 0 and 1 only
        return low >= 0 and high <= 1 and torch.equal(values * values, values)
    return bool(torch.all(support.check(values)))


def _stacked_ok(values, support, masks) -> bool:
    """All stacked observations in support or masked out (masks right-aligned per site)."""
    ok = support.check(values)
    if masks is not None:
        ndim = max(ok.dim(), masks.dim())
        ok = _left_pad(ok, ndim) | ~_left_pad(masks, ndim)
    return bool(torch.all(ok))


#: data tensors found valid, with the (version, storage, support) they were valid for: a
#: training loop observes the same tensor every step, and an unchanged tensor needs no new check
#: (keyed by id: tensors compare elementwise, so they cannot be dictionary keys themselves)
_VALID_DATA: dict[int, tuple[weakref.ref, set]] = {}


def forget_checked_observations() -> None:
    """Check every observation afresh from now on (e.g. after a non-finite loss: data may have
    been changed behind torch's version counter, through ``.data`` or a shared numpy array)."""
    _VALID_DATA.clear()


def _shared_base_ok(group, remember: bool) -> bool:
    """True when the observations are views of one data tensor that is valid throughout.

    A python-loop model observes ``data[:, t]`` step by step: checking ``data`` once is
    cheaper than stacking its slices, and sufficient (not necessary: an invalid entry there may
    be masked out, which the caller's exact check then sees). A data tensor found valid is not
    checked again until it changes (its version counter moves).
    """
    base = group[0]["value"]._base
    support = group[0]["fn"].support
    if base is None or support.event_dim != 0 or base.dtype != group[0]["value"].dtype:
        return False
    if any(s["value"]._base is not base for s in group):
        return False
    if base.numel() > 2 * sum(s["value"].numel() for s in group):
        return False  # a small slice of a large tensor: check the slices
    state = (base._version, base.data_ptr(), constraint_key(support))
    known = _VALID_DATA.get(id(base))
    if remember and known is not None and known[0]() is base and state in known[1]:
        return True
    try:  # NaN lies outside every support: one check finds both
        valid = all_in_support(support, base)
    except Exception:
        return False
    if valid and remember:
        if known is None or known[0]() is not base:
            key = id(base)
            known = _VALID_DATA[key] = (
                weakref.ref(base, lambda _: _VALID_DATA.pop(key, None)),
                set(),
            )
        known[1].add(state)
    return valid


def check_observations(sites, remember_valid_data: bool = False) -> None:
    """Refuse NaN or out-of-support observations, naming the site.

    Sites with the same support, value shape and mask shape are checked as one stacked batch
    (a python loop of per-site checks costs more than the model's own step on a long HMM); the
    offending site is looked up one by one only when a batch fails.
    """
    groups: dict[tuple, list] = {}
    for site in sites:
        value, mask = site["value"], site_mask(site)
        if not torch.is_tensor(value):
            continue
        key = (
            constraint_key(site["fn"].support),
            value.dtype,
            tuple(value.shape),
            None if mask is None else tuple(mask.shape),
        )
        groups.setdefault(key, []).append(site)
    for group in groups.values():
        if len(group) == 1:
            _check_observation(group[0])
            continue
        if _shared_base_ok(group, remember_valid_data):
            continue
        values = torch.stack([s["value"] for s in group])
        masks = None if site_mask(group[0]) is None else torch.stack([s["mask"] for s in group])
        try:
            ok = not (values.is_floating_point() and bool(torch.isnan(values).any()))
            ok = ok and _stacked_ok(values, group[0]["fn"].support, masks)
        except Exception:
            ok = False
        if not ok:
            for site in group:
                _check_observation(site)


def _check_observation(site):
    value = site["value"]
    if not torch.is_tensor(value):
        return
    mask = site_mask(site)
    if value.is_floating_point():
        nan = torch.isnan(value)
        if bool(nan.any()):
            unmasked = nan if mask is None else nan & mask
            masked = site["mask"] is False or not bool(unmasked.any())
            raise _observation_error(site, "masked nan" if masked else "nan")
    try:
        ok = site["fn"].support.check(value)
    except Exception:
        return
    if not bool(torch.all(ok if mask is None else ok | ~mask)):
        raise _observation_error(site, "support")
