"""Contract stage on hand-built plans and tensors, against brute force (float64)."""

import itertools

import torch

from enumdist.engine.contract import backtrack, contract
from enumdist.engine.plan import make_plan
from enumdist.engine.semiring import LOG_SUM, MAX_SUM
from enumdist.engine.steps import ChainStep
from enumdist.engine.tape import ChainRecord, SumRecord
from tests.engine.test_plan import chain_structure


def chain_tensors(structure, sizes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(tuple(sizes[d] for d in dims), generator=generator, dtype=torch.float64)
        for dims, _ in structure
    ]


def path_scores(structure, tensors, length):
    """``{path: log-weight}`` over all paths of the chain, by brute force."""
    scores = {}
    for path in itertools.product(range(3), repeat=length):
        value = {f"x{t}": s for t, s in enumerate(path)}
        scores[path] = sum(
            t[tuple(value[d] for d in dims)] for (dims, _), t in zip(structure, tensors)
        )
    return scores


def test_plate_product_then_sum_equals_brute_force():
    structure = ((("x",), frozenset()), (("x", "a"), frozenset({"a"})))
    plan = make_plan(structure, {"x": 3, "a": 4}, frozenset({"x"}), frozenset({"a"}))
    f, g = torch.randn(3, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    ((out, dims, ordinal),) = contract(plan, [f, g], LOG_SUM)
    assert dims == () and ordinal == frozenset()
    torch.testing.assert_close(out, torch.logsumexp(f + g.sum(1), 0), rtol=1e-12, atol=0)


def test_fused_chain_sums_and_maximises_like_brute_force():
    structure, sizes, sum_vars = chain_structure(6)
    plan = make_plan(structure, sizes, sum_vars, frozenset())
    assert any(isinstance(s, ChainStep) for s in plan.steps)
    tensors = chain_tensors(structure, sizes)
    scores = path_scores(structure, tensors, 6)
    ((log_z, _, _),) = contract(plan, tensors, LOG_SUM)
    torch.testing.assert_close(
        log_z, torch.logsumexp(torch.stack(list(scores.values())), 0), rtol=1e-10, atol=0
    )
    tape = []
    ((best, _, _),) = contract(plan, tensors, MAX_SUM, tape=tape)
    assert [type(r) for r in tape] == [ChainRecord]
    torch.testing.assert_close(best, max(scores.values()), rtol=1e-12, atol=0)
    decided = backtrack(tape, MAX_SUM, sizes)
    path = tuple(int(decided[f"x{t}"][0]) for t in range(6))
    assert path == max(scores, key=lambda p: float(scores[p]))


def test_step_by_step_tape_holds_sum_records_and_backtracks_to_the_argmax():
    structure, sizes, sum_vars = chain_structure(3)  # too short to fuse
    plan = make_plan(structure, sizes, sum_vars, frozenset())
    tensors = chain_tensors(structure, sizes, seed=1)
    scores = path_scores(structure, tensors, 3)
    tape = []
    contract(plan, tensors, MAX_SUM, tape=tape)
    assert [type(r) for r in tape] == [SumRecord] * 3
    decided = backtrack(tape, MAX_SUM, sizes)
    path = tuple(int(decided[f"x{t}"][0]) for t in range(3))
    assert path == max(scores, key=lambda p: float(scores[p]))


def test_every_kind_of_factor_meets_the_log_factor_protocol():
    from enumdist.engine.chain.adapter import Row
    from enumdist.engine.factors import Dense, Factor, LogFactor, dense
    from enumdist.engine.lazy import CategoricalTable, LazyBernoulliLogProb

    logits = Factor(torch.zeros(4, 3, dtype=torch.float64), ("a", "k"))
    bits = Factor(torch.ones(4, 3, dtype=torch.float64), ("a", "k"))
    kinds = [
        logits,
        LazyBernoulliLogProb(logits, bits, None),
        CategoricalTable(torch.zeros(3, 2, dtype=torch.float64), ("x", "y"), True),
    ]
    for factor in kinds:
        assert isinstance(factor, LogFactor)
        assert dense(factor).shape == tuple(factor.sizes[d] for d in factor.dims)
        assert factor.element_size() == 8
    row = Row(torch.zeros(5, 3), 2)
    assert isinstance(row, Dense) and not isinstance(row, LogFactor)
    assert dense(row).shape == (3,)
