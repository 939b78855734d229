"""Plan stage on hand-built structures: a failure here points at planning, not at a number."""

import pytest

from enumdist.engine.errors import EnumerationError
from enumdist.engine.plan import MIN_CHAIN, make_plan
from enumdist.engine.steps import ChainStep, PlateStep, SumStep

NONE = frozenset()


def chain_structure(length):
    """``x_0 - ... - x_{T-1}``: an initial factor, one pairwise and one unary factor per step."""
    names = [f"x{t}" for t in range(length)]
    structure = [((names[0],), NONE)]
    for t in range(length):
        if t:
            structure.append(((names[t - 1], names[t]), NONE))
        structure.append(((names[t],), NONE))
    return tuple(structure), {n: 3 for n in names}, frozenset(names)


def test_a_long_chain_fuses_into_one_chain_step():
    structure, sizes, sum_vars = chain_structure(6)
    plan = make_plan(structure, sizes, sum_vars, frozenset())
    chains = [s for s in plan.steps if isinstance(s, ChainStep)]
    assert len(chains) == 1
    assert chains[0].vars == tuple(f"x{t}" for t in range(6))
    assert not any(isinstance(s, SumStep) for s in plan.steps)
    assert len(chains[0].pairwise) == 5 and len(chains[0].unary) == 6


def test_a_short_chain_stays_step_by_step():
    structure, sizes, sum_vars = chain_structure(MIN_CHAIN - 1)
    plan = make_plan(structure, sizes, sum_vars, frozenset())
    assert [type(s) for s in plan.steps] == [SumStep] * (MIN_CHAIN - 1)
    assert [s.var for s in plan.steps] == [f"x{t}" for t in range(MIN_CHAIN - 1)]


def test_a_plate_product_comes_before_the_global_sum():
    structure = ((("x",), NONE), (("x", "a"), frozenset({"a"})))
    plan = make_plan(structure, {"x": 3, "a": 4}, frozenset({"x"}), frozenset({"a"}))
    plate, total = plan.steps
    assert isinstance(plate, PlateStep) and plate.plates == ("a",) and plate.out_dims == ("x",)
    assert isinstance(total, SumStep) and total.var == "x" and total.out_dims == ()
    assert plan.outputs == ((total.out, (), NONE),)


def test_terms_without_summed_variables_are_outputs_at_their_ordinal():
    a = frozenset({"a"})
    structure = ((("x",), NONE), (("a",), a))
    plan = make_plan(structure, {"x": 3, "a": 4}, frozenset({"x"}), frozenset({"a"}))
    assert (1, ("a",), a) in plan.outputs  # the cost term, un-reduced at its plate
    assert any(dims == () and ordinal == NONE for _, dims, ordinal in plan.outputs)


def test_crossing_plates_are_refused_as_not_a_tree():
    a, b = frozenset({"a"}), frozenset({"b"})
    structure = ((("u", "a"), a), (("v", "b"), b), (("u", "v", "a", "b"), a | b))
    with pytest.raises(EnumerationError, match="not a tree"):
        make_plan(
            structure,
            {"u": 2, "v": 2, "a": 3, "b": 3},
            frozenset({"u", "v"}),
            frozenset({"a", "b"}),
        )
