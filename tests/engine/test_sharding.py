"""Sharded TVE on 2 gloo processes equals the single-process full-data run (float64, rtol 1e-6).

One spawn runs every scenario (spawning costs seconds); each test checks one of them.
"""

import socket

import pytest
import torch
import torch.multiprocessing as mp
import pyro
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

import enumdist
from tests.engine import shard_worker
from tests.engine.shard_cases import SHARD_CASES, record_run

WORLD = 2
RTOL = 1e-6


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("shards")
    ctx = mp.spawn(shard_worker.main, args=(WORLD, _free_port(), str(outdir)), nprocs=WORLD,
                   join=False)
    for process in ctx.processes:
        process.join(timeout=600)
    assert all(p.exitcode == 0 for p in ctx.processes), [p.exitcode for p in ctx.processes]
    results = [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r in results:
        assert "error" not in r, r["error"]
    return results


def full_data_run(case):
    """The oracle: Pyro's TraceEnum_ELBO on one process with all the data."""
    torch.set_default_dtype(torch.float64)
    elbo = TraceEnum_ELBO(max_plate_nesting=case.case.max_plate_nesting)
    return record_run(elbo, case, case.full_args())


@pytest.mark.parametrize("case", SHARD_CASES, ids=[c.name for c in SHARD_CASES])
def test_sharded_equals_full_data(ranks, case):
    expected = full_data_run(case)
    for rank, result in enumerate(ranks):
        got = result[case.name]
        assert got["loss"] == pytest.approx(expected["loss"], rel=RTOL), f"rank {rank}"
        assert got["grads"].keys() == expected["grads"].keys()
        for name, grad in expected["grads"].items():
            torch.testing.assert_close(got["grads"][name], grad, rtol=RTOL, atol=1e-9,
                                       msg=f"grad {name} rank {rank}")
        assert got["svi_losses"] == pytest.approx(expected["svi_losses"], rel=RTOL)
        for name, value in expected["params"].items():
            torch.testing.assert_close(got["params"][name], value, rtol=RTOL, atol=1e-9,
                                       msg=f"param {name} rank {rank}")


def test_averaging_per_shard_losses_would_be_wrong(ranks):
    """The motivating failure: with a global enumerated variable, shard-averaging is biased."""
    case = next(c for c in SHARD_CASES if c.name == "global_outside_plate")
    pyro.clear_param_store()
    elbo = enumdist.EnumELBO(max_plate_nesting=1)
    naive = sum(elbo.loss(case.case.model, case.case.guide_factory(case.case.model),
                          *case.local_args(r, WORLD)) for r in range(WORLD))
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
    full = poutine.trace(enumdist.infer_discrete(case.case.model, first_available_dim=-2,
                                                 temperature=0)).get_trace(*case.full_args())
    bounds = [0, *torch.tensor(case.split(WORLD)).cumsum(0).tolist()]
    for rank, result in enumerate(ranks):
        local = result["decode"]["map"]
        assert int(local["regime"]) == int(full.nodes["regime"]["value"])
        for t in range(case.case.args[0].shape[0]):
            expected = full.nodes[f"x_{t}"]["value"].reshape(-1)[bounds[rank]:bounds[rank + 1]]
            assert torch.equal(local[f"x_{t}"].reshape(-1), expected), (rank, t)
    assert int(ranks[0]["decode"]["sampled_regime"]) == int(ranks[1]["decode"]["sampled_regime"])


def test_a_failing_rank_makes_every_rank_raise_quickly(ranks):
    for rank, result in enumerate(ranks):
        failure = result["bad_data"]
        assert failure["type"] == "ShardError", failure
        assert "rank 1" in failure["message"] and "'x'" in failure["message"] and "NaN" in failure["message"]
        assert failure["seconds"] < 30


def test_different_structure_across_ranks_is_reported(ranks):
    for result in ranks:
        failure = result["different_structure"]
        assert failure["type"] == "ModelStructureError", failure
        assert "extra" in failure["message"]
