"""Model-side sequential enumeration: Pyro refuses it; enumdist equals parallel, with less memory."""

import json
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import TraceEnum_ELBO

import enumdist


def regime_model(data, how="sequential", num_regimes=3):
    probs = pyro.param(
        "regime_probs", torch.ones(num_regimes) / num_regimes, constraint=constraints.simplex
    )
    locs = pyro.param("locs", torch.linspace(-1, 1, num_regimes * 4).reshape(num_regimes, 4))
    regime = pyro.sample("regime", dist.Categorical(probs), infer={"enumerate": how})
    with pyro.plate("data", data.shape[0]):
        z = pyro.sample(
            "z", dist.Categorical(logits=torch.zeros(4)), infer={"enumerate": "parallel"}
        )
        pyro.sample("x", dist.Normal(locs[regime, z], 1.0), obs=data)


def guide(data, how=None, num_regimes=3):
    pass


def loss_and_grads(how, data):
    pyro.clear_param_store()
    loss = enumdist.EnumELBO(max_plate_nesting=1).differentiable_loss(
        regime_model, guide, data, how
    )
    params = [pyro.param("regime_probs").unconstrained(), pyro.param("locs").unconstrained()]
    return loss, torch.autograd.grad(loss, params)


def test_pyro_refuses_model_side_sequential():
    with pytest.raises(NotImplementedError):
        TraceEnum_ELBO(max_plate_nesting=1).loss(regime_model, guide, torch.randn(5))


def test_sequential_equals_parallel_loss_and_gradients():
    data = torch.randn(30)
    seq_loss, seq_grads = loss_and_grads("sequential", data)
    par_loss, par_grads = loss_and_grads("parallel", data)
    torch.testing.assert_close(seq_loss, par_loss, rtol=1e-10, atol=0)
    for s, p in zip(seq_grads, par_grads):
        torch.testing.assert_close(s, p, rtol=1e-9, atol=1e-12)
    pyro.clear_param_store()
    pyro_loss = TraceEnum_ELBO(max_plate_nesting=1).loss(regime_model, guide, data, "parallel")
    assert float(seq_loss.detach()) == pytest.approx(pyro_loss, rel=1e-10)


def test_sequential_inside_a_plate_is_refused_clearly():
    def model(data):
        with pyro.plate("data", len(data)):
            z = pyro.sample(
                "z", dist.Categorical(logits=torch.zeros(2)), infer={"enumerate": "sequential"}
            )
            pyro.sample("x", dist.Normal(z.double(), 1.0), obs=data)

    with pytest.raises(ValueError, match="'z'.*inside plate"):
        enumdist.EnumELBO(max_plate_nesting=1).loss(model, guide, torch.randn(3))


PEAK = r"""
import json, sys, torch, pyro
sys.path.insert(0, {root!r})
from tests.engine.test_sequential import regime_model, guide
from tests.engine.memory_probe import peak_rss, reset_peak
import enumdist
torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)
data = torch.randn(200_000)
before = reset_peak()
enumdist.EnumELBO(max_plate_nesting=1).differentiable_loss(regime_model, guide, data, {how!r}, 16).backward()
after = peak_rss()
print(json.dumps({{"peak_growth_kib": (after - before) // 1024}}))
"""


@pytest.mark.slow
def test_sequential_uses_less_peak_memory():
    import pathlib

    root = str(pathlib.Path(__file__).resolve().parents[2])
    growth = {}
    for how in ("parallel", "sequential"):
        out = subprocess.run(
            [sys.executable, "-c", PEAK.format(root=root, how=how)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        growth[how] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_kib"]
    ratio = growth["parallel"] / max(growth["sequential"], 1)
    print(
        f"peak memory growth: parallel {growth['parallel'] / 1024:.0f} MiB, "
        f"sequential {growth['sequential'] / 1024:.0f} MiB ({ratio:.1f}x less)"
    )
    assert growth["sequential"] * 3 < growth["parallel"]
