"""Runs in each spawned rank: sharded losses, gradients, SVI steps, decodes and faults."""

from __future__ import annotations

import os
import traceback

import pyro
import torch
import torch.distributed as tdist
from pyro import poutine

import enumdist
from enumdist.process_group import init_process_group
from tests.engine import shard_cases, zoo
from tests.engine.shard_cases import SHARD_CASES, record_run
from tests.engine.spawn import expect_failure


def sharded_run(case, rank, world):
    elbo = enumdist.EnumELBO(
        max_plate_nesting=case.case.max_plate_nesting, shard_plates=[case.plate]
    )
    return record_run(elbo, case, case.local_args(rank, world))


def comm_bytes_for_size(n, rank, world):
    data = zoo._data(n, seed=11)
    local = data.chunk(world)[rank]
    pyro.clear_param_store()
    elbo = enumdist.EnumELBO(max_plate_nesting=1, shard_plates=["data"])
    elbo.loss_and_grads(zoo.global_outside_plate, zoo.empty_guide, local)
    return elbo.last_comm_bytes


def sharded_decode(rank, world):
    case = next(c for c in SHARD_CASES if c.name == "hmm_global_regime")
    args = case.local_args(rank, world)
    pyro.clear_param_store()
    decoder = enumdist.infer_discrete(
        case.case.model, first_available_dim=-2, temperature=0, shard_plates=["sequences"]
    )
    trace = poutine.trace(decoder).get_trace(*args)
    values = {
        n: s["value"]
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"]
    }
    pyro.set_rng_seed(rank)  # different seeds: global samples must still agree
    sampler = enumdist.infer_discrete(
        case.case.model, first_available_dim=-2, temperature=1, shard_plates=["sequences"]
    )
    sample = poutine.trace(sampler).get_trace(*args).nodes["regime"]["value"]
    return {"map": values, "sampled_regime": sample}


def latent_values(trace):
    return {
        n: s["value"]
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"]
    }


def entry_points(rank, world):
    """compute_marginals, sample_posterior, infer_discrete (MAP and samples), the bytes of a
    loss, and the errors every rank must raise alike."""
    local = shard_cases.entry_slice(rank, world)
    model, guide = shard_cases.global_and_local, zoo.empty_guide
    elbo = enumdist.EnumELBO(max_plate_nesting=1, shard_plates=["data"])
    pyro.clear_param_store()
    out = {"loss": elbo.loss(model, guide, local), "loss_comm_bytes": elbo.last_comm_bytes}
    out["marginals"] = {
        n: (type(d).__name__, d.probs)
        for n, d in elbo.compute_marginals(model, guide, local).items()
    }
    out["map"] = latent_values(
        poutine.trace(
            enumdist.infer_discrete(
                model, first_available_dim=-2, temperature=0, shard_plates=["data"]
            )
        ).get_trace(local)
    )
    pyro.set_rng_seed(100 + rank)  # different seeds: the globals must agree all the same
    draws = enumdist.EnumELBO(max_plate_nesting=2, shard_plates=["data"])
    out["posterior_draws"] = draws.sample_posterior(shard_cases.many_draws, guide, local)
    sampler = enumdist.infer_discrete(
        shard_cases.many_draws, first_available_dim=-3, temperature=1, shard_plates=["data"]
    )
    sampled = latent_values(poutine.trace(sampler).get_trace(local))
    out["infer_discrete_draws"] = (sampled["g"], sampled["z"])
    guide_side = shard_cases.guide_side_global_guide
    out["marginals_guide_side"] = expect_failure(
        lambda: elbo.compute_marginals(shard_cases.guide_side_global, guide_side, local),
        NotImplementedError,
    )
    out["sample_posterior_guide_side"] = expect_failure(
        lambda: elbo.sample_posterior(shard_cases.guide_side_global, guide_side, local),
        NotImplementedError,
    )
    empty = local if rank == 0 else local[:0]
    out["empty_shard"] = expect_failure(lambda: elbo.loss(model, guide, empty))
    out["empty_shard_decode"] = expect_failure(
        lambda: enumdist.infer_discrete(
            model, first_available_dim=-2, temperature=0, shard_plates=["data"]
        )(empty)
    )
    return out


def bad_data_on_one_shard(rank, world):
    data = zoo._data(10, seed=2)
    local = data.chunk(world)[rank].clone()
    if rank == 1:
        local[0] = float("nan")
    return expect_failure(
        lambda: enumdist.EnumELBO(max_plate_nesting=1, shard_plates=["data"]).loss(
            zoo.gaussian_mixture, zoo.empty_guide, local
        )
    )


def different_structure(rank, world):
    data = zoo._data(10, seed=2).chunk(world)[rank]

    def model(data):
        zoo.gaussian_mixture(data)
        if rank == 1:
            pyro.sample("extra", pyro.distributions.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    return expect_failure(
        lambda: enumdist.EnumELBO(max_plate_nesting=1, shard_plates=["data"]).loss(
            model, zoo.empty_guide, data
        )
    )


def main(rank, world, port, outdir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    init_process_group("gloo", rank=rank, world_size=world, timeout_s=60)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    results = {}
    try:
        for case in SHARD_CASES:
            results[case.name] = sharded_run(case, rank, world)
        results["comm_bytes"] = {n: comm_bytes_for_size(n, rank, world) for n in (40, 4000)}
        results["decode"] = sharded_decode(rank, world)
        results["bad_data"] = bad_data_on_one_shard(rank, world)
        results["different_structure"] = different_structure(rank, world)
        results["entry_points"] = entry_points(rank, world)
    except Exception:
        results["error"] = traceback.format_exc()
    torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
    tdist.destroy_process_group()
