"""Bad input gets a clear error that names the site or plate and says what to do."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import enumdist
from enumdist.engine.errors import EnumerationError, MemoryBudgetError

ENUM = {"enumerate": "parallel"}


def no_guide(*args, **kwargs):
    pass


def mixture(data, enumerate_z=True):
    with pyro.plate("data", len(data)):
        z = pyro.sample(
            "z", dist.Categorical(logits=torch.zeros(3)), infer=ENUM if enumerate_z else {}
        )
        pyro.sample("x", dist.Normal(z.double(), 1.0), obs=data)


def test_enumerating_a_continuous_site():
    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0), infer=ENUM)
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=data)

    with pytest.raises(EnumerationError, match="model site 'mu'.*no finite support"):
        enumdist.EnumELBO(max_plate_nesting=1).loss(model, no_guide, torch.randn(3))


def test_max_plate_nesting_too_small():
    def model(data):
        with pyro.plate("outer", 2, dim=-2), pyro.plate("inner", 3, dim=-1):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(2)), infer=ENUM)
            pyro.sample("x", dist.Normal(z.double(), 1.0), obs=data)

    with pytest.raises(EnumerationError, match="plate 'outer'.*max_plate_nesting=2"):
        enumdist.EnumELBO(max_plate_nesting=1).loss(model, no_guide, torch.randn(2, 3))


def test_plate_without_dim_that_collides():
    def model(data):
        with pyro.plate("outer", 2), pyro.plate("inner", 3):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(2)), infer=ENUM)
            pyro.sample("x", dist.Normal(z.double(), 1.0), obs=data)

    with pytest.raises(EnumerationError, match="plate 'inner'.*dim -2.*explicit dim="):
        enumdist.EnumELBO(max_plate_nesting=1).loss(model, no_guide, torch.randn(2, 3).T)


def test_first_available_dim_overlapping_plates():
    with pytest.raises(
        EnumerationError, match="plate 'data'.*first_available_dim=-1.*first_available_dim=-2"
    ):
        enumdist.infer_discrete(mixture, first_available_dim=-1, temperature=0)(torch.randn(3))


def test_nan_observation():
    data = torch.tensor([0.1, float("nan"), 0.3])
    with pytest.raises(EnumerationError, match="observed site 'x' contains NaN"):
        enumdist.EnumELBO(max_plate_nesting=1).loss(mixture, no_guide, data)


def test_out_of_support_observation():
    def model(data):
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(2)), infer=ENUM)
            pyro.sample("flip", dist.Bernoulli(0.2 + 0.5 * z.double()), obs=data)

    with (
        pytest.raises(EnumerationError, match="observed site 'flip'.*outside the support"),
        pyro.validation_enabled(False),
    ):
        enumdist.EnumELBO(max_plate_nesting=1).loss(model, no_guide, torch.tensor([0.0, 2.0]))


def test_memory_budget_preflight_refuses_before_allocating():
    def model(data):
        xs = []
        with pyro.plate("data", len(data)):
            for i in range(6):
                xs.append(
                    pyro.sample(f"x{i}", dist.Categorical(logits=torch.zeros(10)), infer=ENUM)
                )
            pyro.sample("y", dist.Normal(sum(x.double() for x in xs), 1.0), obs=data)

    with pytest.raises(
        MemoryBudgetError, match=r"site 'y'.*shape \(10, 10, 10, 10, 10, 10, 1000\)"
    ):
        enumdist.EnumELBO(max_plate_nesting=1, memory_budget=2**20).loss(
            model, no_guide, torch.randn(1000)
        )


def test_memory_budget_preflight_on_the_elimination():
    """Three pairwise factors in a cycle: each is small, eliminating one variable is not."""

    def model(data):
        with pyro.plate("data", len(data)):
            a, b, c = (
                pyro.sample(n, dist.Categorical(logits=torch.zeros(30)), infer=ENUM) for n in "abc"
            )
            for name, (u, v) in {"ab": (a, b), "bc": (b, c), "ca": (c, a)}.items():
                pyro.sample(name, dist.Normal(u.double() - v.double(), 1.0), obs=data)

    with pytest.raises(
        MemoryBudgetError,
        match=r"tensor over \[.*\] of shape \((30|500), (30|500), (30|500), (30|500)\) \(103.0 MiB\)",
    ):
        enumdist.EnumELBO(max_plate_nesting=1, memory_budget=50 * 2**20).loss(
            model, no_guide, torch.randn(500)
        )


def test_shard_plates_on_one_process_check_the_plate_and_run_locally():
    data = torch.randn(5)
    sharded = enumdist.EnumELBO(max_plate_nesting=1, shard_plates=["data"]).loss(
        mixture, no_guide, data
    )
    local = enumdist.EnumELBO(max_plate_nesting=1).loss(mixture, no_guide, data)
    assert sharded == local
    with pytest.raises(
        EnumerationError, match=r"shard_plates names \['sequences'\].*plates: \['data'\]"
    ):
        enumdist.EnumELBO(max_plate_nesting=1, shard_plates=["sequences"]).loss(
            mixture, no_guide, data
        )


def test_out_of_support_found_in_a_batch_of_same_shaped_sites():
    """Observations are checked stacked; the error still names the one bad site, and masked
    entries (right-aligned masks of fewer dims than the value) are exempt."""

    def model(data, mask):
        with pyro.plate("keys", data.shape[-1], dim=-1), pyro.plate("rows", data.shape[-2], dim=-2):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(2)), infer=ENUM)
            for t in range(data.shape[0]):
                with poutine.mask(mask=mask[t]):
                    pyro.sample(f"y_{t}", dist.Bernoulli(0.3 + 0.4 * z.double()), obs=data[t])

    data = torch.randint(0, 2, (5, 3, 4)).double()
    mask = torch.ones(5, 3, 1, dtype=torch.bool)
    elbo = enumdist.EnumELBO(max_plate_nesting=2)
    elbo.loss(model, no_guide, data, mask)
    data[3, 1, 2] = 2.0
    with (
        pytest.raises(EnumerationError, match="observed site 'y_3'.*outside the support"),
        pyro.validation_enabled(False),
    ):
        elbo.loss(model, no_guide, data, mask)
    mask[3, 1] = False  # that row is masked out: the value no longer matters
    with pyro.validation_enabled(False):
        elbo.loss(model, no_guide, data, mask)
    data[4, 0, 0] = float("nan")
    with pytest.raises(EnumerationError, match="observed site 'y_4' contains NaN"):
        elbo.loss(model, no_guide, data, mask)


def test_invalid_distribution_argument_after_the_first_call_is_still_reported():
    """Argument checks run on the first call and again whenever a loss is not finite."""

    def model(data):
        weights = pyro.param("weights", torch.tensor([0.5, 0.5]))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(probs=weights), infer=ENUM)
            pyro.sample("x", dist.Normal(z.double(), 1.0), obs=data)

    pyro.clear_param_store()
    elbo = enumdist.EnumELBO(max_plate_nesting=1)
    data = torch.randn(4)
    assert torch.isfinite(torch.tensor(elbo.loss(model, no_guide, data)))
    pyro.param("weights").data[0] = float("nan")
    with pytest.raises(ValueError, match="probs.*Categorical.*Simplex"):
        elbo.loss(model, no_guide, data)


def test_data_changed_behind_the_version_counter_is_still_reported():
    """A valid data tensor is not re-checked while unchanged; NaNs written through ``.data``
    (which leaves the version counter alone) make the loss non-finite, and that re-checks."""

    def model(data):
        with pyro.plate("rows", data.shape[0], dim=-1):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(2)), infer=ENUM)
            for t in range(data.shape[1]):
                pyro.sample(f"y_{t}", dist.Normal(z.double(), 1.0), obs=data[:, t])

    data = torch.randn(4, 5, dtype=torch.float64)
    elbo = enumdist.EnumELBO(max_plate_nesting=1)
    elbo.loss(model, no_guide, data)
    elbo.loss(model, no_guide, data)
    data.data[2, 3] = float("nan")
    with pytest.raises(EnumerationError, match="observed site 'y_3' contains NaN"):
        elbo.loss(model, no_guide, data)
