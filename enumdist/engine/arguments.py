"""Distribution-argument checks on every call, stacked: Pyro's validation at a fraction of its cost.

With ``pyro.enable_validation`` on, torch checks each distribution's parameters against their
constraints when the distribution is built (``Categorical(probs)`` lies on the simplex, a
``Normal`` scale is positive, ...). A python-loop HMM builds two distributions per time step,
and those checks cost a quarter of an enumdist step. Here the programs are traced with torch's
checks off and the same constraints are checked afterwards, grouped: parameters with the same
distribution type, name, constraint and shape are stacked and checked in one op per group (the
transition tables of all steps at once). Only a failing group is searched parameter by
parameter, to name the site in the error.
"""

from __future__ import annotations

import inspect

import torch
from torch.distributions import constraints
from torch.distributions.utils import lazy_property

from enumdist.engine.errors import InvalidArgumentError
from enumdist.engine.observations import constraint_key


def _distributions(fn):
    """``fn`` and the distributions it wraps (Independent, Masked, Expanded, ...)."""
    while fn is not None:
        yield fn
        fn = getattr(fn, "base_dist", None)


#: distribution type -> its checked arguments ``[(name, constraint, key, lazy)]``, for types whose
#: ``arg_constraints`` is a class-level dict (most): read once, not once per site
_CLASS_ARGUMENTS: dict[type, list] = {}


def _argument_specs(fn) -> list:
    cls = type(fn)
    specs = _CLASS_ARGUMENTS.get(cls)
    if specs is not None:
        return specs
    try:
        arg_constraints = getattr(fn, "arg_constraints", {})  # none on plates' _Subsample
    except NotImplementedError:
        arg_constraints = {}
    specs = [
        (
            name,
            constraint,
            constraint_key(constraint),
            isinstance(getattr(cls, name, None), lazy_property),
        )
        for name, constraint in arg_constraints.items()
        if not constraints.is_dependent(constraint)
    ]
    if isinstance(inspect.getattr_static(cls, "arg_constraints", None), dict):
        _CLASS_ARGUMENTS[cls] = specs
    return specs


def _arguments(fn):
    """``(name, constraint, key, value)`` of the parameters torch's validation would check."""
    for name, constraint, key, lazy in _argument_specs(fn):
        if lazy and name not in fn.__dict__:
            continue  # lazily derived from the parameter that was given
        value = getattr(fn, name, None)
        if torch.is_tensor(value):
            yield name, constraint, key, value


def _is_valid(constraint, value) -> bool:
    return bool(torch.all(constraint.check(value)))


def _error(site, fn, name, constraint, value) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"Expected parameter {name} ({type(value).__name__} of shape {tuple(value.shape)}) of "
        f"distribution {type(fn).__name__} at site '{site['name']}' to satisfy the constraint "
        f"{constraint!r}, but found invalid values:\n{value}\nKeep the parameter in its domain: "
        "a pyro.param with constraint=..., or a transform (softmax, softplus) of a free tensor."
    )


def check_distribution_arguments(traces) -> None:
    """Refuse any sample site whose distribution has a parameter outside its constraint.

    The same contract as torch's ``validate_args=True`` at construction, for the distributions
    of the traced sites (and those they wrap); raises :class:`InvalidArgumentError` (a
    ``ValueError``, as torch's) naming the site and the parameter.
    """
    groups: dict[tuple, list] = {}
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            for fn in _distributions(site["fn"]):
                for name, constraint, key, value in _arguments(fn):
                    stride = value.stride()
                    if 0 in stride:  # a plate's expand adds nothing to check: one slice
                        value = value.as_strided(
                            [1 if st == 0 else n for n, st in zip(value.shape, stride)],
                            stride,
                            value.storage_offset(),
                        )
                    groups.setdefault((type(fn), name, key, value.dtype, value.shape), []).append(
                        (site, fn, name, constraint, value)
                    )
    with torch.no_grad():
        _check_groups(groups)


def _check_groups(groups) -> None:
    for members in groups.values():
        constraint = members[0][3]
        try:
            valid = _is_valid(constraint, torch.stack([m[4] for m in members]))
        except (RuntimeError, TypeError):  # a constraint that does not batch: one by one
            valid = False
        if valid:
            continue
        for site, fn, name, constraint, value in members:
            if not _is_valid(constraint, value):
                raise _error(site, fn, name, constraint, value)
