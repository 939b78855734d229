"""A chain's time axis split over 2 gloo ranks equals one process (float64, rtol 1e-9):
log Z and gradients against Pyro's DiscreteHMM, MAP paths against enumdist.DiscreteHMM's
Viterbi, posterior draws against the enumerated posterior; faults raise on every rank.

One spawn runs every scenario (spawning costs seconds); each test checks one of them.
"""

import itertools

import pyro.distributions as pd
import pytest
import torch

import enumdist
from tests.engine import time_shard_worker
from tests.engine.spawn import run_ranks
from tests.engine.time_shard_cases import CASES, block_range, full_emissions, normalised, parameters

WORLD = 2
RTOL = 1e-9

pytestmark = pytest.mark.slow  # one 2-process spawn: ~20 s alone, over a minute on a busy machine


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_ranks(
        time_shard_worker.main, WORLD, tmp_path_factory.mktemp("time_shards"), deadline_s=300
    )


def _pyro_hmm(params):
    return pd.DiscreteHMM(params["init"], params["trans"], pd.Normal(params["loc"], 1.0))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_log_z_and_gradients_equal_one_process(ranks, case):
    params, y = parameters(case)
    expected = _pyro_hmm(params).log_prob(y)
    (-expected.sum()).backward()
    for rank, result in enumerate(ranks):
        got = result[case.name]
        torch.testing.assert_close(
            got["log_z"], expected.detach(), rtol=RTOL, atol=0, msg=f"log Z, rank {rank}"
        )
        for name, p in params.items():
            torch.testing.assert_close(
                got["grads"][name], p.grad, rtol=RTOL, atol=1e-12, msg=f"grad {name}, rank {rank}"
            )


def test_discrete_hmm_door_equals_pyro(ranks):
    params, y = parameters(CASES[1])
    expected = _pyro_hmm(params).log_prob(y)
    (-expected.sum()).backward()
    for rank, result in enumerate(ranks):
        got = result["via_distribution"]
        torch.testing.assert_close(got["log_z"], expected.detach(), rtol=RTOL, atol=0)
        for name, p in params.items():
            torch.testing.assert_close(
                got["grads"][name], p.grad, rtol=RTOL, atol=1e-12, msg=f"grad {name}, rank {rank}"
            )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_map_path_equals_one_process(ranks, case):
    params, y = parameters(case)
    with torch.no_grad():
        path = enumdist.DiscreteHMM(
            params["init"], params["trans"], pd.Normal(params["loc"], 1.0)
        ).viterbi(y)
    pieces = []
    for rank, result in enumerate(ranks):
        start, stop = block_range(case, rank)
        assert result[case.name]["map"].shape == (case.num_sequences, stop - start)
        pieces.append(result[case.name]["map"])
        torch.testing.assert_close(
            result[case.name]["map_log_joint"], path.log_joint, rtol=RTOL, atol=0
        )
    assert torch.equal(torch.cat(pieces, 1), path.states)


def _path_log_joint(init, trans, emissions, states):
    score = torch.logsumexp(init + trans[:, states[0]], 0) + emissions[0, states[0]]
    for t in range(1, len(states)):
        score = score + trans[states[t - 1], states[t]] + emissions[t, states[t]]
    return score


def test_posterior_draws_follow_the_exact_posterior(ranks):
    """Chi-square of 4000 joint draws (each rank drew its half given the boundary states)
    against the 16 enumerated paths; and each draw's log p(x, y) is the path's own."""
    case = time_shard_worker.SAMPLE_CASE
    params, y = parameters(case, seed=5)
    init, trans = (x.detach() for x in normalised(params))
    emissions = full_emissions(params, y).detach()[0]
    paths = list(itertools.product(range(case.states), repeat=case.steps))
    scores = torch.stack([_path_log_joint(init, trans, emissions, p) for p in paths])
    posterior = torch.softmax(scores, 0)
    draws = torch.cat([r["samples"][0] for r in ranks], 1)  # [copies, T]
    n = draws.shape[0]
    seen = [tuple(x) for x in draws.tolist()]
    observed = torch.tensor([seen.count(p) for p in paths], dtype=torch.float64)
    chi2 = ((observed - posterior * n) ** 2 / (posterior * n)).sum()
    assert chi2 < 37.7, (observed, posterior * n)  # 99.9% quantile of chi-square, 15 dof
    for result in ranks:
        for i in range(10):
            k = paths.index(seen[i])
            torch.testing.assert_close(result["samples"][1][i], scores[k], rtol=RTOL, atol=0)


def test_bytes_communicated_do_not_grow_with_steps(ranks):
    for result in ranks:
        small, large = result["bytes"][40], result["bytes"][4000]
        assert small == large > 0


def test_faults_raise_on_every_rank(ranks):
    for rank, result in enumerate(ranks):
        faults = result["faults"]
        assert faults["states_differ"]["type"] == "ModelStructureError", faults["states_differ"]
        assert "disagree on S" in faults["states_differ"]["message"]
        assert faults["bad_block"]["type"] == "ShardError", faults["bad_block"]
        assert "transition_logits" in faults["bad_block"]["message"] or rank == 0
        assert faults["different_calls"]["type"] == "ModelStructureError"
        assert "disagree on call" in faults["different_calls"]["message"]
        for fault in ("states_differ", "bad_block", "different_calls"):
            assert faults[fault]["seconds"] < 10, fault  # raised, not timed out
    torch.testing.assert_close(ranks[0]["faults"]["after"], ranks[1]["faults"]["after"])
