"""EnumELBO equals TraceEnum_ELBO: loss, every gradient, and SVI trajectories (float64)."""

import pyro
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import Adam

import enumdist
from tests.engine.zoo import CASE_IDS, CASES

RTOL = 1e-7


def loss_and_grads(elbo_cls, case, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = case.guide_factory(case.model)
    elbo = elbo_cls(max_plate_nesting=case.max_plate_nesting)
    loss = elbo.differentiable_loss(case.model, guide, *case.args)
    names = sorted(pyro.get_param_store().keys())
    params = [pyro.param(n).unconstrained() for n in names]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), dict(zip(names, grads))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_loss_and_gradients_equal_pyro(case):
    expected_loss, expected_grads = loss_and_grads(TraceEnum_ELBO, case)
    actual_loss, actual_grads = loss_and_grads(enumdist.EnumELBO, case)
    torch.testing.assert_close(actual_loss, expected_loss, rtol=RTOL, atol=0)
    assert actual_grads.keys() == expected_grads.keys()
    for name, expected in expected_grads.items():
        actual = actual_grads[name]
        if expected is None:
            assert actual is None or torch.all(actual == 0), name
            continue
        torch.testing.assert_close(actual, expected, rtol=RTOL, atol=1e-10, msg=name)


def trajectory(elbo_cls, case, steps=4):
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    guide = case.guide_factory(case.model)
    svi = SVI(
        case.model,
        guide,
        Adam({"lr": 0.05}),
        loss=elbo_cls(max_plate_nesting=case.max_plate_nesting),
    )
    history = []
    for _ in range(steps):
        loss = svi.step(*case.args)
        history.append(
            (
                loss,
                {n: pyro.param(n).detach().clone() for n in sorted(pyro.get_param_store().keys())},
            )
        )
    return history


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_svi_trajectory_equals_pyro(case):
    expected = trajectory(TraceEnum_ELBO, case)
    actual = trajectory(enumdist.EnumELBO, case)
    for step, ((loss_e, params_e), (loss_a, params_a)) in enumerate(zip(expected, actual)):
        assert loss_a == pytest.approx(loss_e, rel=RTOL), f"step {step}"
        for name in params_e:
            torch.testing.assert_close(
                params_a[name], params_e[name], rtol=RTOL, atol=1e-10, msg=f"{name} at step {step}"
            )


def test_zoo_is_large_enough():
    assert len(CASES) >= 12


@pytest.mark.parametrize("vectorize", [False, True])
def test_multiple_particles_equal_pyro(vectorize):
    import pyro.distributions as dist
    from pyro import poutine
    from pyro.infer.autoguide import AutoNormal
    from pyro.ops.indexing import Vindex

    data = torch.tensor([-1.3, 0.2, 1.7, 2.2, -0.4])

    def model(data):
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
        weights = pyro.param(
            "weights", torch.tensor([0.3, 0.7]), constraint=dist.constraints.simplex
        )
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample(
                "x", dist.Normal(Vindex(torch.tensor([-1.0, 1.0]))[z] + shift, 1.0), obs=data
            )

    def run(elbo_cls):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        guide = AutoNormal(poutine.block(model, hide=["z"]))
        elbo = elbo_cls(max_plate_nesting=1, num_particles=3, vectorize_particles=vectorize)
        loss = elbo.differentiable_loss(model, guide, data)
        names = sorted(pyro.get_param_store().keys())
        return loss.detach(), torch.autograd.grad(
            loss, [pyro.param(n).unconstrained() for n in names]
        )

    expected_loss, expected_grads = run(TraceEnum_ELBO)
    actual_loss, actual_grads = run(enumdist.EnumELBO)
    torch.testing.assert_close(actual_loss, expected_loss, rtol=RTOL, atol=0)
    for a, e in zip(actual_grads, expected_grads):
        torch.testing.assert_close(a, e, rtol=RTOL, atol=1e-10)
