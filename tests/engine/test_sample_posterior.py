"""EnumELBO.sample_posterior: TraceEnum_ELBO.sample_posterior's contract, exact posterior draws."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.infer.autoguide import AutoDelta

import enumdist
from tests.engine.brute_force import joint_posterior
from tests.engine.zoo import ENUM, empty_guide, global_outside_plate

DATA = torch.tensor([0.3, -1.2, 2.0])
NUM_DRAWS = 20000


def many_draws(data):
    with pyro.plate("draws", NUM_DRAWS, dim=-2):
        global_outside_plate(data)
        return (pyro.sample("g_copy", dist.Delta(torch.zeros(()))),)  # a return value


def _frequencies_match(draws, assignments, probs):
    """Every marginal of g, of each z_i and of the pairs (g, z_i) within 5 standard errors."""
    g, z = draws
    for gv in range(2):
        for i in range(3):
            for zv in range(3):
                exact = float(
                    sum(p for a, p in zip(assignments, probs) if a["g"] == gv and a["z"][i] == zv)
                )
                freq = float(((g == gv) & (z[:, i] == zv)).double().mean())
                assert abs(freq - exact) <= 5 * (exact * (1 - exact) / NUM_DRAWS) ** 0.5 + 1e-3, (
                    gv,
                    i,
                    zv,
                    freq,
                    exact,
                )


@pytest.mark.parametrize("engine", ["pyro", "enumdist"])
def test_draws_follow_the_brute_force_posterior(engine):
    """Pyro's and ours, by the same statistics: both are exact joint posterior draws."""
    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    elbo = (TraceEnum_ELBO if engine == "pyro" else enumdist.EnumELBO)(max_plate_nesting=2)
    trace = poutine.trace(elbo.sample_posterior).get_trace(many_draws, empty_guide, DATA)
    draws = (
        trace.nodes["g"]["value"].reshape(NUM_DRAWS),
        trace.nodes["z"]["value"].reshape(NUM_DRAWS, 3),
    )
    assignments, probs = joint_posterior(
        global_outside_plate, (DATA,), {"g": ((), 2), "z": ((3,), 3)}
    )
    _frequencies_match(draws, assignments, probs)


def test_returns_what_the_model_returns_replayed_against_the_guide():
    torch.set_default_dtype(torch.float64)

    def model(data):
        shift = pyro.sample("shift", dist.Normal(0.0, 3.0))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(torch.tensor([0.5, 0.5])), infer=ENUM)
            pyro.sample("x", dist.Normal(shift + 4.0 * z, 0.5), obs=data)
        return z

    data = torch.tensor([0.1, 4.2, -0.3, 3.9])
    pyro.clear_param_store()
    guide = AutoDelta(poutine.block(model, hide=["z"]))
    guide(data)
    trace = poutine.trace(enumdist.EnumELBO(max_plate_nesting=1).sample_posterior).get_trace(
        model, guide, data
    )
    assert torch.equal(trace.nodes["_RETURN"]["value"], trace.nodes["z"]["value"])
    assert trace.nodes["shift"]["value"] == pyro.param("AutoDelta.shift")  # the guide's draw
    assert trace.nodes["z"]["value"].tolist() == [0, 1, 0, 1]  # posterior mass ~1 on these


def test_refuses_what_pyro_refuses():
    from tests.engine.zoo import guide_enumerated_guide, guide_enumerated_model

    pyro.clear_param_store()
    with pytest.raises(NotImplementedError, match="guide enumeration"):
        enumdist.EnumELBO(max_plate_nesting=1).sample_posterior(
            guide_enumerated_model, guide_enumerated_guide, DATA
        )
    with pytest.raises(NotImplementedError, match="multiple particles"):
        enumdist.EnumELBO(max_plate_nesting=1, num_particles=2).sample_posterior(
            global_outside_plate, empty_guide, DATA
        )


@pytest.mark.parametrize("how", ["sequential", "parallel"])
def test_posterior_queries_refuse_a_guide_enumerating_either_way(how):
    """As TraceEnum_ELBO: compute_marginals and sample_posterior need one guide draw."""
    from tests.engine.shard_cases import guide_side_global

    def guide(data):
        q = pyro.param(
            "q_r",
            torch.tensor([0.3, 0.7], dtype=torch.float64),
            constraint=dist.constraints.simplex,
        )
        pyro.sample("r", dist.Categorical(q), infer={"enumerate": how})

    torch.set_default_dtype(torch.float64)
    for engine in (TraceEnum_ELBO, enumdist.EnumELBO):
        for method in ("compute_marginals", "sample_posterior"):
            pyro.clear_param_store()
            with pytest.raises(NotImplementedError, match="guide enumeration"):
                getattr(engine(max_plate_nesting=1), method)(guide_side_global, guide, DATA)
