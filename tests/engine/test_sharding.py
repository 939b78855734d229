"""Sharded TVE on 2 gloo processes equals the single-process full-data run (float64, rtol 1e-6).

One spawn runs every scenario (spawning costs seconds); each test checks one of them.
"""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

import enumdist
from tests.engine import shard_worker
from tests.engine.shard_cases import SHARD_CASES, record_run
from tests.engine.spawn import run_ranks

WORLD = 2
RTOL = 1e-6


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_ranks(shard_worker.main, WORLD, tmp_path_factory.mktemp("shards"), deadline_s=600)


def full_data_run(case):
    """The oracle: Pyro's TraceEnum_ELBO on one process with all the data."""
    torch.set_default_dtype(torch.float64)
    elbo = TraceEnum_ELBO(max_plate_nesting=case.case.max_plate_nesting)
    return record_run(elbo, case, case.full_args(), model=case.oracle and case.oracle.model)


@pytest.mark.parametrize("case", SHARD_CASES, ids=[c.name for c in SHARD_CASES])
def test_sharded_equals_full_data(ranks, case):
    expected = full_data_run(case)
    for rank, result in enumerate(ranks):
        got = result[case.name]
        assert got["loss"] == pytest.approx(expected["loss"], rel=RTOL), f"rank {rank}"
        assert got["differentiable_loss"] == pytest.approx(
            expected["differentiable_loss"], rel=RTOL
        ), f"rank {rank}"
        assert got["grads"].keys() == expected["grads"].keys()
        for name, grad in expected["grads"].items():
            torch.testing.assert_close(
                got["grads"][name], grad, rtol=RTOL, atol=1e-9, msg=f"grad {name} rank {rank}"
            )
        assert got["svi_losses"] == pytest.approx(expected["svi_losses"], rel=RTOL)
        for name, value in expected["params"].items():
            torch.testing.assert_close(
                got["params"][name], value, rtol=RTOL, atol=1e-9, msg=f"param {name} rank {rank}"
            )


def test_averaging_per_shard_losses_would_be_wrong(ranks):
    """The motivating failure: with a global enumerated variable, shard-averaging is biased."""
    case = next(c for c in SHARD_CASES if c.name == "global_outside_plate")
    pyro.clear_param_store()
    elbo = enumdist.EnumELBO(max_plate_nesting=1)
    naive = sum(
        elbo.loss(
            case.case.model, case.case.guide_factory(case.case.model), *case.local_args(r, WORLD)
        )
        for r in range(WORLD)
    )
    exact = ranks[0]["global_outside_plate"]["loss"]
    print(f"sum of per-shard losses {naive:.4f} vs exact sharded {exact:.4f}")
    assert abs(naive - exact) > 1e-3


def test_bytes_communicated_do_not_grow_with_data(ranks):
    for result in ranks:
        small, large = result["comm_bytes"][40], result["comm_bytes"][4000]
        print(f"bytes all-reduced per step: N=40 -> {small}, N=4000 -> {large}")
        assert small == large > 0


def test_sharded_map_equals_full_data_map(ranks):
    case = next(c for c in SHARD_CASES if c.name == "hmm_global_regime")
    pyro.clear_param_store()
    full = poutine.trace(
        enumdist.infer_discrete(case.case.model, first_available_dim=-2, temperature=0)
    ).get_trace(*case.full_args())
    bounds = [0, *torch.tensor(case.split(WORLD)).cumsum(0).tolist()]
    for rank, result in enumerate(ranks):
        local = result["decode"]["map"]
        assert int(local["regime"]) == int(full.nodes["regime"]["value"])
        for t in range(case.case.args[0].shape[0]):
            expected = full.nodes[f"x_{t}"]["value"].reshape(-1)[bounds[rank] : bounds[rank + 1]]
            assert torch.equal(local[f"x_{t}"].reshape(-1), expected), (rank, t)
    assert int(ranks[0]["decode"]["sampled_regime"]) == int(ranks[1]["decode"]["sampled_regime"])


def test_a_failing_rank_makes_every_rank_raise_quickly(ranks):
    for result in ranks:
        failure = result["bad_data"]
        assert failure["type"] == "ShardError", failure
        assert (
            "rank 1" in failure["message"]
            and "'x'" in failure["message"]
            and "NaN" in failure["message"]
        )
        assert failure["seconds"] < 30


def test_different_structure_across_ranks_is_reported(ranks):
    for result in ranks:
        failure = result["different_structure"]
        assert failure["type"] == "ModelStructureError", failure
        assert "extra" in failure["message"]


# --- every other entry point, on 12 points split 6/6 with a global enumerated variable --------

from tests.engine import shard_cases  # noqa: E402


def _full_marginals(model=shard_cases.global_and_local):
    pyro.clear_param_store()
    return enumdist.EnumELBO(max_plate_nesting=1).compute_marginals(
        model, shard_cases.zoo.empty_guide, shard_cases.ENTRY_DATA
    )


def _rank_slice(rank):
    bounds = [0, *torch.tensor([len(c) for c in shard_cases.ENTRY_DATA.chunk(WORLD)]).cumsum(0)]
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def test_sharded_marginals_equal_full_data_marginals(ranks):
    """Rank-local marginals were the bug: rank 0 said p(g=0)=0.9991 where the data say 0.0018."""
    full = _full_marginals()
    for rank, result in enumerate(ranks):
        got = result["entry_points"]["marginals"]
        assert got.keys() == full.keys()
        kind, g = got["g"]
        assert kind == "Categorical"
        torch.testing.assert_close(g, full["g"].probs, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(
            got["z"][1], full["z"].probs[_rank_slice(rank)], rtol=1e-9, atol=1e-12
        )
    print("p(g) full data:", full["g"].probs.tolist())


def test_sharded_loss_counts_its_message_bytes(ranks):
    for result in ranks:
        assert result["entry_points"]["loss_comm_bytes"] > 0


def test_sharded_map_of_every_rank_is_the_full_data_map(ranks):
    pyro.clear_param_store()
    full = poutine.trace(
        pyro.infer.infer_discrete(
            shard_cases.global_and_local, first_available_dim=-2, temperature=0
        )
    ).get_trace(shard_cases.ENTRY_DATA)
    for rank, result in enumerate(ranks):
        local = result["entry_points"]["map"]
        assert int(local["g"]) == int(full.nodes["g"]["value"])
        assert torch.equal(local["z"], full.nodes["z"]["value"][_rank_slice(rank)])


def _assert_draws_follow(g, z, marginals, rank):
    """Empirical frequencies of g and of each z_i within 5 standard errors of the exact ones."""
    n = g.numel()
    g = g.reshape(n)
    for value, p in enumerate(marginals["g"].probs.tolist()):
        freq = float((g == value).double().mean())
        assert abs(freq - p) <= 5 * max((p * (1 - p) / n) ** 0.5, 1 / n), (rank, "g", freq, p)
    z = z.reshape(n, -1)
    exact_z = marginals["z"].probs[_rank_slice(rank)]
    for i in range(z.shape[1]):
        for value in range(3):
            p = float(exact_z[i, value])
            freq = float((z[:, i] == value).double().mean())
            assert abs(freq - p) <= 5 * max((p * (1 - p) / n) ** 0.5, 1 / n), (rank, i, freq, p)


@pytest.mark.parametrize("entry", ["posterior_draws", "infer_discrete_draws"])
def test_sharded_samples_follow_the_full_data_posterior(ranks, entry):
    """sample_posterior and infer_discrete(temperature=1), each rank seeded differently: the
    global draws agree on every rank and both follow the full-data posterior."""
    full = _full_marginals()
    g0, _ = ranks[0]["entry_points"][entry]
    for rank, result in enumerate(ranks):
        g, z = result["entry_points"][entry]
        assert torch.equal(g, g0), "ranks disagree on the global draws"
        _assert_draws_follow(g, z, full, rank)


def test_entry_points_refusing_guide_enumeration_refuse_on_every_rank(ranks):
    for key in ("marginals_guide_side", "sample_posterior_guide_side"):
        messages = {r["entry_points"][key]["message"] for r in ranks}
        assert [r["entry_points"][key]["type"] for r in ranks] == ["NotImplementedError"] * WORLD
        assert len(messages) == 1 and "guide enumeration" in messages.pop()


@pytest.mark.parametrize("entry", ["empty_shard", "empty_shard_decode"])
def test_an_empty_shard_is_named_on_every_rank(ranks, entry):
    for result in ranks:
        failure = result["entry_points"][entry]
        assert failure["type"] == "ShardError", failure
        assert "rank 1 holds no items of plate 'data'" in failure["message"]
        assert failure["seconds"] < 30
