"""Observation checks: refuse NaN or out-of-support data, naming the site, at little cost.

A python-loop model observes one slice of its data per site, hundreds of sites per step; one
check per site would cost more than the rest of the step. Sites are grouped (same support,
shape and mask shape) and checked at once: through the data tensor they all view, when there is
one, else stacked. A data tensor found valid is remembered until its version counter moves;
only a failing group is searched site by site, for the error message.
"""

from __future__ import annotations

import weakref

import torch

from enumdist.engine.errors import EnumerationError


def _observation_error(site, problem: str) -> EnumerationError:
    if problem == "nan":
        return EnumerationError(
            f"observed site '{site['name']}' contains NaN values; remove or mask them "
            f"(poutine.mask) before fitting."
        )
    return EnumerationError(
        f"observed site '{site['name']}' has values outside the support {site['fn'].support} of "
        f"its {type(site['fn']).__name__} distribution; fix the data (or mask those entries)."
    )


def site_mask(site):
    """The site's mask tensor, or None when it is absent or a constant."""
    mask = site["mask"]
    return None if mask is None or mask is True or mask is False else mask


def _support_key(support) -> tuple:
    """Hashable identity of a constraint *value* (Categorical builds a new one per instance)."""
    key = (type(support), tuple(sorted(vars(support).items())))
    try:
        hash(key)
    except TypeError:  # unhashable attributes: group by the object itself
        return (type(support), id(support))
    return key


def _left_pad(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Insert singleton dims after the leading (stack) dim until ``x`` has ``ndim`` dims."""
    return x.reshape(x.shape[:1] + (1,) * (ndim - x.dim()) + x.shape[1:])


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


def _shared_base_ok(group) -> bool:
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
    state = (base._version, base.data_ptr(), _support_key(support))
    known = _VALID_DATA.get(id(base))
    if known is not None and known[0]() is base and state in known[1]:
        return True
    try:
        if base.is_floating_point() and bool(torch.isnan(base).any()):
            return False
        valid = bool(torch.all(support.check(base)))
    except Exception:  # noqa: BLE001 - a support whose check does not apply to the base
        return False
    if valid:
        if known is None or known[0]() is not base:
            key = id(base)
            known = _VALID_DATA[key] = (weakref.ref(base, lambda _: _VALID_DATA.pop(key, None)),
                                        set())
        known[1].add(state)
    return valid


def check_observations(sites) -> None:
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
        key = (_support_key(site["fn"].support), value.dtype, tuple(value.shape),
               None if mask is None else tuple(mask.shape))
        groups.setdefault(key, []).append(site)
    for group in groups.values():
        if len(group) == 1:
            _check_observation(group[0])
            continue
        if _shared_base_ok(group):
            continue
        values = torch.stack([s["value"] for s in group])
        masks = None if site_mask(group[0]) is None else torch.stack([s["mask"] for s in group])
        try:
            ok = not (values.is_floating_point() and bool(torch.isnan(values).any()))
            ok = ok and _stacked_ok(values, group[0]["fn"].support, masks)
        except Exception:  # noqa: BLE001 - a support whose check does not batch
            ok = False
        if not ok:
            for site in group:
                _check_observation(site)


def _check_observation(site):
    value = site["value"]
    if not torch.is_tensor(value):
        return
    if value.is_floating_point() and torch.isnan(value).any():
        raise _observation_error(site, "nan")
    mask = site_mask(site)
    try:
        ok = site["fn"].support.check(value)
    except Exception:  # noqa: BLE001 - exotic supports without a vectorised check
        return
    if not bool(torch.all(ok if mask is None else ok | ~mask)):
        raise _observation_error(site, "support")
