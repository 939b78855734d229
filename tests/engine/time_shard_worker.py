"""Runs in each spawned rank: time-sharded log Z, gradients, MAP, samples, bytes and faults."""

from __future__ import annotations

import os
import traceback
from datetime import timedelta

import torch
import torch._dynamo  # imported before init_process_group: avoids gloo's exit-time abort
import torch.distributed as tdist

from enumdist.engine.time_sharding import TimeShardedChain, average_gradients
from tests.engine.spawn import expect_failure
from tests.engine.time_shard_cases import CASES, ChainCase, block_inputs, parameters

SAMPLE_CASE = ChainCase("samples", 1, 4, 2, (2, 2), False, False)
SAMPLE_COPIES = 4000


def exact_run(case, rank):
    params, y = parameters(case)
    sharded = TimeShardedChain()
    log_z = sharded.log_likelihood(*block_inputs(case, params, y, rank))
    (-log_z.sum()).backward()
    average_gradients(params.values())
    with torch.no_grad():
        states, best = sharded.map(*block_inputs(case, params, y, rank))
    return {
        "log_z": log_z.detach(),
        "grads": {k: p.grad for k, p in params.items()},
        "map": states,
        "map_log_joint": best,
        "bytes": sharded.bytes_communicated,
    }


def via_distribution(rank):
    """enumdist.DiscreteHMM.time_sharded_log_prob on each rank's block (the user's door)."""
    import pyro.distributions as pd

    import enumdist
    from tests.engine.time_shard_cases import block_range

    case = CASES[1]  # time-varying transitions and observations, batched init
    params, y = parameters(case)
    start, stop = block_range(case, rank)
    hmm = enumdist.DiscreteHMM(
        params["init"], params["trans"][start:stop], pd.Normal(params["loc"][start:stop], 1.0)
    )
    log_z = hmm.time_sharded_log_prob(y[:, start:stop], TimeShardedChain())
    (-log_z.sum()).backward()
    average_gradients(params.values())
    return {"log_z": log_z.detach(), "grads": {k: p.grad for k, p in params.items()}}


def samples(rank):
    params, y = parameters(SAMPLE_CASE, seed=5)
    y = y.expand(SAMPLE_COPIES, -1)  # many copies of one sequence: many draws at once
    with torch.no_grad():
        init, trans, emissions = block_inputs(SAMPLE_CASE, params, y, rank)
        generator = torch.Generator().manual_seed(100 + rank)
        return TimeShardedChain().sample(init, trans, emissions, generator=generator)


def comm_bytes(rank, steps):
    case = ChainCase("bytes", 2, steps, 3, (steps // 2, steps - steps // 2), False, False)
    params, y = parameters(case)
    sharded = TimeShardedChain()
    sharded.log_likelihood(*block_inputs(case, params, y, rank)).sum().backward()
    return sharded.bytes_communicated


def faults(rank):
    case = CASES[0]
    params, y = parameters(case)
    init, trans, emissions = block_inputs(case, params, y, rank)
    sharded = TimeShardedChain()
    out = {}
    # rank 1 has one more state
    wide = torch.cat([emissions, emissions[..., :1]], -1) if rank == 1 else emissions
    wide_trans = torch.zeros(4, 4, dtype=trans.dtype) if rank == 1 else trans
    wide_init = torch.zeros(4, dtype=trans.dtype) if rank == 1 else init
    out["states_differ"] = expect_failure(
        lambda: sharded.log_likelihood(wide_init, wide_trans, wide)
    )
    # rank 1's transitions do not fit its emissions: it fails, and rank 0 must not hang
    bad = trans[:2] if rank == 1 else trans
    out["bad_block"] = expect_failure(lambda: sharded.log_likelihood(init, bad, emissions))
    # the ranks make different calls
    call = sharded.map if rank == 0 else sharded.log_likelihood
    out["different_calls"] = expect_failure(lambda: call(init, trans, emissions))
    # and afterwards a good call still works
    out["after"] = sharded.log_likelihood(init, trans, emissions).detach()
    return out


def main(rank, world, port, outdir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    results = {}
    try:
        for case in CASES:
            results[case.name] = exact_run(case, rank)
        results["via_distribution"] = via_distribution(rank)
        results["samples"] = samples(rank)
        results["bytes"] = {t: comm_bytes(rank, t) for t in (40, 4000)}
        results["faults"] = faults(rank)
    except Exception:  # surfaced by the test
        results["error"] = traceback.format_exc()
    torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
    tdist.destroy_process_group()
