"""The per-distribution rules on hand-built sites: what each rule builds must equal the plain
log-prob (torch's own ``log_prob`` is the oracle), and a type without a rule gets none."""

import pyro.distributions as dist
import torch

from enumdist.engine.distribution_rules import (
    RULES,
    compact_distribution,
    enumerated_table,
    lazy_log_prob,
    rule_for,
)
from enumdist.engine.factors import align
from enumdist.engine.lazy import CategoricalTable, LazyBernoulliLogProb

DIMS = {-1: "keys", -2: "sequences"}


def site(fn, value, observed=True, mask=None):
    return {
        "fn": fn,
        "value": value,
        "args": (),
        "kwargs": {},
        "is_observed": observed,
        "mask": mask,
    }


def in_order(factor, dims):
    """``factor``'s tensor with its dims in the order ``dims``, full size."""
    return align(factor.tensor, factor.dims, dims).expand(tuple(factor.sizes[d] for d in dims))


class MyBernoulli(dist.Bernoulli):
    """A subclass may carry state the rule does not know: it gets no rule."""


def test_the_registry_names_the_four_compactable_types():
    assert set(RULES) == {dist.Bernoulli, dist.Categorical, dist.Normal, dist.Poisson}
    assert rule_for(MyBernoulli(0.5)).compact_params == ()
    assert rule_for(dist.Gamma(1.0, 1.0)).lazy_log_prob is None


def test_compact_distribution_keeps_the_parameterisation_and_the_log_prob():
    probs = torch.rand(3, 1, dtype=torch.float64)
    fn = dist.Bernoulli(probs=probs.expand(3, 5))
    value = torch.randint(0, 2, (3, 5)).double()
    compact = compact_distribution(fn)
    assert "probs" in compact.__dict__ and "logits" not in compact.__dict__
    assert compact.probs.shape == (3, 1)
    assert torch.allclose(compact.log_prob(value), fn.log_prob(value), rtol=1e-12)
    loc = torch.randn(4, 1, dtype=torch.float64)
    normal = dist.Normal(loc.expand(4, 6), 2.0)
    x = torch.randn(4, 6, dtype=torch.float64)
    assert torch.allclose(compact_distribution(normal).log_prob(x), normal.log_prob(x))


def test_compact_distribution_declines_what_it_cannot_shrink():
    assert compact_distribution(dist.Bernoulli(torch.rand(3, 5))) is None  # nothing expanded
    assert compact_distribution(dist.Gamma(torch.ones(1).expand(4), 1.0)) is None  # no rule
    assert compact_distribution(MyBernoulli(torch.rand(1).expand(4))) is None  # a subclass


def test_lazy_bernoulli_equals_the_masked_log_prob():
    logits = torch.randn(2, 1, 4, dtype=torch.float64)  # (states, sequences, keys)
    value = torch.randint(0, 2, (3, 4)).double()
    mask = torch.tensor([True, False, True]).unsqueeze(-1)
    fn = dist.Bernoulli(logits=logits.expand(2, 3, 4))
    lazy = lazy_log_prob(site(fn, value, mask=mask), {**DIMS, -3: "x"}, "site 'y'", frozenset())
    assert isinstance(lazy, LazyBernoulliLogProb)
    expected = torch.where(mask, fn.log_prob(value), torch.zeros(()))
    assert torch.allclose(in_order(lazy, ("x", "sequences", "keys")), expected, rtol=1e-12)


def test_no_lazy_factor_for_latent_sites_or_other_types():
    value = torch.ones(3, 4)
    bernoulli = dist.Bernoulli(torch.rand(3, 4))
    assert lazy_log_prob(site(bernoulli, value, observed=False), DIMS, "y", frozenset()) is None
    assert lazy_log_prob(site(MyBernoulli(torch.rand(3, 4)), value), DIMS, "y", frozenset()) is None
    normal = dist.Normal(torch.zeros(3, 4), 1.0)
    assert lazy_log_prob(site(normal, value), DIMS, "y", frozenset()) is None


def test_categorical_table_is_the_log_prob_over_the_support():
    probs = torch.rand(3, 4, dtype=torch.float64).softmax(-1)  # (sequences, values)
    fn = dist.Categorical(probs=probs.unsqueeze(-2))  # batch (sequences, 1)
    support = torch.arange(4).reshape(4, 1, 1)  # the enumerated support, at dim -3
    names = {-1: "keys", -2: "sequences", -3: "x"}
    table = enumerated_table(site(fn, support, observed=False), "x", names, "x", frozenset())
    assert isinstance(table, CategoricalTable)
    assert table.dims == ("sequences", "x")
    expected = fn.log_prob(support).reshape(4, 3).T
    assert torch.allclose(table.tensor.reshape(3, 4), expected, rtol=1e-12)


def test_no_table_for_an_expanded_support_or_other_types():
    fn = dist.Categorical(logits=torch.zeros(3, 4))
    expanded = torch.arange(4).reshape(4, 1).expand(4, 3)  # infer={'expand': True}
    names = {-1: "sequences", -2: "x"}
    assert enumerated_table(site(fn, expanded, False), "x", names, "x", frozenset()) is None
    bernoulli = dist.Bernoulli(torch.rand(3))
    support = torch.arange(2.0).reshape(2, 1)
    assert enumerated_table(site(bernoulli, support, False), "x", names, "x", frozenset()) is None
