"""FunctionModel: an ordinary Pyro model function, wrapped without a class. Its loss and
gradients equal Pyro's TraceEnum_ELBO on the same function with the global param store."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

import enumdist
from enumdist.models import FunctionModel
from enumdist.pipeline.guides import auto


def mixture(batch):
    """A plain Pyro model: pyro.param statements, one enumerated site, a plate over the data."""
    weights = pyro.param("weights", torch.ones(3) / 3, constraint=constraints.simplex)
    locs = pyro.param("locs", lambda: torch.tensor([-2.0, 0.0, 2.0], dtype=torch.float64))
    with pyro.plate("data", batch["num_total"], subsample=batch["index"]):
        z = pyro.sample("z", dist.Categorical(weights.double()), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=batch["x"])


def noisy_mixture(batch):
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", batch["num_total"], subsample=batch["index"]):
        z = pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(2 * z - 1.0, scale), obs=batch["x"])


def batch_of(num: int = 12, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.cat(
        [
            torch.randn(num // 2, generator=g, dtype=torch.float64) - 2,
            torch.randn(num - num // 2, generator=g, dtype=torch.float64) + 2,
        ]
    )
    return {"x": x, "index": torch.arange(num), "num_total": num}


def test_loss_and_gradients_equal_pyro_on_the_plain_function():
    pyro.settings.set(module_local_params=True)
    batch = batch_of()
    model = FunctionModel(mixture)
    loss = enumdist.EnumELBO(max_plate_nesting=1).differentiable_loss(
        model.model, lambda b: None, batch
    )
    assert sorted(n for n, _ in model.named_parameters()) == ["params.locs", "params.weights"]
    grads = torch.autograd.grad(loss, [model.params["weights"], model.params["locs"]])

    pyro.settings.set(module_local_params=False)
    try:
        pyro.clear_param_store()
        oracle = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
            mixture, lambda b: None, batch
        )
        store = pyro.get_param_store()
        expected = torch.autograd.grad(
            oracle, [store["weights"].unconstrained(), store["locs"].unconstrained()]
        )
    finally:
        pyro.settings.set(module_local_params=True)
        pyro.clear_param_store()
    assert loss.item() == pytest.approx(oracle.item(), rel=1e-10)
    for ours, theirs in zip(grads, expected):
        torch.testing.assert_close(ours.double(), theirs.double(), rtol=1e-6, atol=1e-9)
    assert model.state_sites(batch) == {"z": ["z"]}  # EnumModel's default: each enumerated site


def test_parameters_reload_from_a_state_dict_before_the_first_call():
    trained = FunctionModel(
        "tests.models.test_function_model.mixture"
    )  # an import path, as in YAML
    trained.model(batch_of())
    with torch.no_grad():
        trained.params["locs"].add_(1.0)
    fresh = FunctionModel(mixture)
    fresh.load_state_dict(trained.state_dict())
    torch.testing.assert_close(fresh.params["locs"], trained.params["locs"])


def test_a_latent_neither_enumerated_nor_declared_is_refused_and_a_declared_one_is_guided():
    with pytest.raises(ValueError, match=r"sites \['scale'\] are neither enumerated nor observed"):
        FunctionModel(noisy_mixture).model(batch_of())
    model = FunctionModel(noisy_mixture, global_latents=["scale"])
    guide = auto(model, "AutoDelta")
    loss = enumdist.EnumELBO(max_plate_nesting=1).loss(model.model, guide, batch_of())
    assert torch.isfinite(torch.tensor(loss))
    assert [n for n, _ in guide.named_parameters()] == ["auto.scale_unconstrained"]


def test_a_bad_import_path_names_the_key():
    with pytest.raises(ValueError, match=r"model.function='no_such_package.model'"):
        FunctionModel("no_such_package.model")
