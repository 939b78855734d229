"""DiCE expectation: the expected ELBO costs under the guide's own random choices.

The guide weighs the costs through *dice factors* (log-space tensors, one per guide site,
built in :mod:`enumdist.engine.guide_enum`): ``log q`` for an enumerated site, ``log q -
log q.detach() - log n`` for a Monte Carlo enumerated one (``num_samples=n``), ``log q - log
q.detach()`` for a sampled, non-reparameterised one. A cost at ordinal ``t`` (the plates it lives
in) is weighted by the factors of the sites whose plates are a subset of ``t`` -- Pyro's
coarse dependency rule -- and divided by the number of sequentially enumerated runs that do
not reach it.

A cost only needs the *marginal* of the product of those factors over its own variables, as
in Pyro's ``Dice.compute_expectation``: aligning every cost with all guide weights would build
a tensor over every enumerated guide variable at once (``2^T`` for ``T`` binary sites). The
marginal is computed by variable elimination in which the plates of ``t`` stay batch dims
(plates are never multiplied out here). The weights of unrelated sites are still multiplied
in: their sum is 1 in value, but a Monte Carlo or score-function weight carries a gradient
that the estimator needs.
"""

from __future__ import annotations

import math

import torch

from enumdist.engine.errors import MemoryBudgetError
from enumdist.engine.factors import align
from enumdist.engine.memory import format_bytes


def check_budget(dims, sizes, itemsize, memory_budget, what):
    """Refuse, before allocating, a tensor over ``dims`` larger than ``memory_budget`` bytes."""
    if memory_budget is None:
        return
    nbytes = math.prod(sizes[d] for d in dims) * itemsize
    if nbytes > memory_budget:
        raise MemoryBudgetError(
            f"{what} would build a tensor over {list(dims)} of shape "
            f"{tuple(sizes[d] for d in dims)} ({format_bytes(nbytes)}), over memory_budget="
            f"{format_bytes(memory_budget)}. Too many guide-enumerated (or num_samples Monte "
            "Carlo) variables meet in one site: lower num_samples, enumerate fewer sites "
            "jointly, or raise memory_budget."
        )


class Marginals:
    """Marginals of the product of some log-factors, with the plates kept as batch dims.

    ``factors`` is a list of ``(tensor, dims)``; ``plates`` the names that are never summed.
    Factors that share no variable form independent components; the total of each component
    is computed once and reused by every query that does not touch it.
    """

    def __init__(self, factors, plates, sizes, memory_budget=None):
        self.plates = frozenset(plates)
        self.sizes = sizes
        self.memory_budget = memory_budget
        self.components = self._components(factors)
        self._totals = {}

    def _vars(self, dims):
        return frozenset(d for d in dims if d not in self.plates)

    def _components(self, factors):
        groups: list[tuple[set, list]] = []
        for factor in factors:
            own = self._vars(factor[1])
            touching = [g for g in groups if g[0] & own] if own else []
            merged = (set(own), [factor])
            for g in touching:
                merged[0].update(g[0])
                merged[1][:0] = g[1]
                groups.remove(g)
            groups.append(merged)
        return [(frozenset(v), f) for v, f in groups]

    def _eliminate(self, factors, keep):
        """Sum out every variable of ``factors`` not in ``keep``; one ``(tensor, dims)``."""
        factors = list(factors)
        while True:
            todo = [
                d
                for d in dict.fromkeys(d for _, dims in factors for d in dims)
                if d not in self.plates and d not in keep
            ]
            if not todo:
                break
            unions = [_union(factors, v) for v in todo]
            sizes = [math.prod(self.sizes[d] for d in dims) for dims in unions]
            pick = sizes.index(min(sizes))
            var, target = todo[pick], unions[pick]
            self._check(target, factors)
            inside = [f for f in factors if var in f[1]]
            total = sum(align(t, d, target) for t, d in inside)
            out_dims = tuple(d for d in target if d != var)
            out = torch.logsumexp(total, dim=target.index(var))
            factors = [f for f in factors if var not in f[1]] + [(out, out_dims)]
        return _add(factors, self._check)

    def _check(self, dims, factors):
        itemsize = factors[0][0].element_size() if factors else 8
        check_budget(
            dims,
            self.sizes,
            itemsize,
            self.memory_budget,
            "the DiCE expectation over guide-enumerated variables",
        )

    def _total(self, index):
        if index not in self._totals:
            self._totals[index] = self._eliminate(self.components[index][1], frozenset())
        return self._totals[index]

    def _all_totals(self):
        """The sum of every component's total, or None when one is ``-inf`` somewhere."""
        if not hasattr(self, "_sum_of_totals"):
            totals = [self._total(i) for i in range(len(self.components))]
            finite = all(bool(torch.isfinite(t).all()) for t, _ in totals)
            self._sum_of_totals = _add(totals, self._check) if finite else None
        return self._sum_of_totals

    def log_marginal(self, query: frozenset):
        """``log sum_{variables not in query} prod exp(factors)`` as ``(tensor, dims)``.

        The components a query does not touch enter through their totals: as the sum of all
        totals minus the touched ones (one subtraction per touched component, so that a
        mean-field guide costs ``O(sites)`` per query, not ``O(sites^2)`` in all), or one by
        one where a total is ``-inf`` and the subtraction would give NaN.
        """
        touched = [i for i, (variables, _) in enumerate(self.components) if variables & query]
        parts = [self._eliminate(self.components[i][1], query) for i in touched]
        everything = self._all_totals() if len(self.components) > 2 * len(touched) else None
        if everything is not None:
            parts.append(everything)
            parts.extend((-self._total(i)[0], self._total(i)[1]) for i in touched)
        else:
            parts.extend(self._total(i) for i in range(len(self.components)) if i not in touched)
        return _add(parts, self._check)


def _union(factors, var) -> tuple:
    """The dims of the product of the factors that mention ``var``."""
    return tuple(dict.fromkeys(d for _, dims in factors if var in dims for d in dims))


def _add(parts, check):
    """Sum of log-tensors ``[(tensor, dims)]`` broadcast to the union of their dims."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    target = tuple(dict.fromkeys(d for _, dims in parts for d in dims))
    check(target, parts)
    return sum(align(t, d, target) for t, d in parts), target


def expected_costs(terms, dice_factors, log_denominators, sizes, plate_names, memory_budget=None):
    """``[(E[cost], ordinal)]``: each group of costs weighted by its guide marginal.

    ``terms``: ``(tensor, dims, ordinal)``, already scaled and signed. ``dice_factors``: terms
    with ``.factor`` (a named log tensor) and ``.ordinal``. ``log_denominators``: ``{ordinal:
    log count}`` of sequentially enumerated guide sites: a cost that no such site reaches is
    seen once per value, so is divided by the count. Zero-probability entries are dropped so
    that ``0 * -inf`` gives neither NaN values nor NaN gradients.
    """
    plate_names = frozenset(plate_names)
    by_ordinal: dict[frozenset, list] = {}
    for term in terms:
        by_ordinal.setdefault(term[2], []).append(term)
    results = []
    for ordinal, group in by_ordinal.items():
        upstream = [(w.factor.tensor, w.factor.dims) for w in dice_factors if w.ordinal <= ordinal]
        log_scale = -sum(v for o, v in log_denominators.items() if not o <= ordinal)
        marginals = Marginals(upstream, plate_names, sizes, memory_budget) if upstream else None
        cache = {}
        total = None
        for tensor, dims, _ in group:
            query = frozenset(d for d in dims if d not in plate_names)
            if marginals is not None and query not in cache:
                cache[query] = marginals.log_marginal(query)
            weight = cache.get(query)
            value = _weighted_sum(tensor, dims, weight, ordinal, sizes, memory_budget)
            total = value if total is None else total + value
        if log_scale:
            total = total * math.exp(log_scale)
        results.append((total, ordinal))
    return results


def _weighted_sum(tensor, dims, weight, ordinal, sizes, memory_budget):
    """``sum(exp(weight) * cost)`` over every dim, counting plates neither broadcasts over."""
    if weight is None:
        target = tuple(dims)
    else:
        log_w, w_dims = weight
        target = tuple(dict.fromkeys(tuple(dims) + tuple(w_dims)))
        check_budget(
            target,
            sizes,
            tensor.element_size(),
            memory_budget,
            "weighting a cost by its guide marginal",
        )
        cost = align(tensor, dims, target)
        prob = align(log_w, w_dims, target).exp()
        positive = prob > 0
        if not bool(positive.all()):
            cost = torch.where(positive, cost, cost.new_zeros(()))
        tensor = cost * prob
    missing = math.prod(sizes[p] for p in ordinal if p not in target)
    value = tensor.sum()
    return value * missing if missing != 1 else value
