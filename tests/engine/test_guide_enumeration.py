"""Guide-side enumeration equals TraceEnum_ELBO: sequential, parallel and Monte Carlo sites.

Every number is Pyro's, computed here in float64 on the same seed (loss, every gradient, SVI
steps); Monte Carlo enumeration is also checked by its statistics over many seeds.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam

import enumdist
from enumdist.engine.errors import MemoryBudgetError

RTOL = 1e-7
SEQ = {"enumerate": "sequential"}
PAR = {"enumerate": "parallel"}


def mc(n):
    return {"enumerate": "parallel", "num_samples": n}


def loss_and_grads(elbo, model, guide, *args, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide, *args)
    names = sorted(pyro.get_param_store().keys())
    params = [pyro.param(n).unconstrained() for n in names]
    grads = torch.autograd.grad(loss, params, allow_unused=True) if params else []
    return loss.detach(), dict(zip(names, grads))


def assert_equals_pyro(
    model, guide, *args, max_plate_nesting, seed=0, memory_budget=None, **kwargs
):
    """Loss and every gradient equal TraceEnum_ELBO's (``kwargs`` go to both ELBOs)."""
    expected, expected_grads = loss_and_grads(
        TraceEnum_ELBO(max_plate_nesting=max_plate_nesting, **kwargs),
        model,
        guide,
        *args,
        seed=seed,
    )
    actual, actual_grads = loss_and_grads(
        enumdist.EnumELBO(
            max_plate_nesting=max_plate_nesting, memory_budget=memory_budget, **kwargs
        ),
        model,
        guide,
        *args,
        seed=seed,
    )
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=1e-12)
    assert actual_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        if grad is None:
            assert actual_grads[name] is None or torch.all(actual_grads[name] == 0), name
        else:
            torch.testing.assert_close(actual_grads[name], grad, rtol=RTOL, atol=1e-10, msg=name)
    return float(actual)


def assert_svi_equals_pyro(model, guide, *args, max_plate_nesting, steps=3):
    def run(elbo):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        svi = SVI(model, guide, Adam({"lr": 0.1}), loss=elbo)
        losses = [svi.step(*args) for _ in range(steps)]
        return losses, {
            n: pyro.param(n).detach().clone() for n in sorted(pyro.get_param_store().keys())
        }

    expected = run(TraceEnum_ELBO(max_plate_nesting=max_plate_nesting))
    actual = run(enumdist.EnumELBO(max_plate_nesting=max_plate_nesting))
    assert actual[0] == pytest.approx(expected[0], rel=RTOL)
    for name, value in expected[1].items():
        torch.testing.assert_close(actual[1][name], value, rtol=RTOL, atol=1e-10, msg=name)


# -- models -------------------------------------------------------------------------------------


def bernoulli_model():
    pyro.sample("z", dist.Bernoulli(0.25))


def bernoulli_guide():
    p = pyro.param("p", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
    pyro.sample("z", dist.Bernoulli(p), infer=SEQ)


def plated_model(data):
    a = pyro.sample("a", dist.Bernoulli(0.3))
    with pyro.plate("p", 3, dim=-1):
        b = pyro.sample(
            "b", dist.Categorical(torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])[a.long()])
        )
        with pyro.plate("q", 2, dim=-2):
            c = pyro.sample("c", dist.Bernoulli(0.1 + 0.2 * b.double()))
            pyro.sample("o", dist.Normal(c + a, 1.0), obs=data)


def plated_guide(how_a, how_b, how_c):
    def guide(data):
        pa = pyro.param("pa", torch.tensor(0.6), constraint=dist.constraints.unit_interval)
        pb = pyro.param("pb", torch.tensor([0.3, 0.3, 0.4]), constraint=dist.constraints.simplex)
        pc = pyro.param(
            "pc", torch.tensor([0.4, 0.7]).unsqueeze(-1), constraint=dist.constraints.unit_interval
        )
        pyro.sample("a", dist.Bernoulli(pa), infer={"enumerate": how_a})
        with pyro.plate("p", 3, dim=-1):
            pyro.sample("b", dist.Categorical(pb), infer={"enumerate": how_b})
            with pyro.plate("q", 2, dim=-2):
                pyro.sample("c", dist.Bernoulli(pc), infer={"enumerate": how_c})

    return guide


def chain_model(data):
    z = 0
    for t in pyro.markov(range(len(data))):
        z = pyro.sample(f"z{t}", dist.Categorical(torch.tensor([[0.9, 0.1], [0.2, 0.8]])[z]))
        pyro.sample(f"x{t}", dist.Normal(z * 1.0, 1.0), obs=data[t])


def chain_guide(how):
    def guide(data):
        z = 0
        for t in pyro.markov(range(len(data))):
            logits = pyro.param(f"q{t}", torch.zeros(2, 2) + 0.1 * t)
            z = pyro.sample(f"z{t}", dist.Categorical(logits=logits[z]), infer={"enumerate": how})

    return guide


# -- 1a: sequential guide sites -----------------------------------------------------------------


def test_sequential_global_site_is_exact_kl():
    loss = assert_equals_pyro(bernoulli_model, bernoulli_guide, max_plate_nesting=0)
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert loss == pytest.approx(kl, rel=1e-12)


@pytest.mark.parametrize(
    "hows",
    [
        ("sequential", "sequential", "sequential"),
        ("sequential", "parallel", "sequential"),
        ("parallel", "sequential", "parallel"),
        ("sequential", "parallel", "parallel"),
    ],
)
def test_sequential_sites_in_nested_plates_equal_pyro(hows):
    data = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 1.5]])
    assert_equals_pyro(plated_model, plated_guide(*hows), data, max_plate_nesting=2)


@pytest.mark.parametrize("how", ["sequential", "parallel"])
def test_markov_chain_guide_equals_pyro(how):
    data = torch.tensor([0.3, 1.2, -0.4, 0.9])
    assert_equals_pyro(chain_model, chain_guide(how), data, max_plate_nesting=0)


def test_sequential_guide_svi_steps_equal_pyro():
    data = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 1.5]])
    assert_svi_equals_pyro(
        plated_model,
        plated_guide("sequential", "parallel", "sequential"),
        data,
        max_plate_nesting=2,
    )


def test_sequential_guide_whose_structure_depends_on_the_value():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.3))
        if z.item() == 1:
            pyro.sample("w", dist.Normal(0.0, 1.0))

    def guide():
        p = pyro.param("p", torch.tensor(0.4), constraint=dist.constraints.unit_interval)
        loc = pyro.param("loc", torch.tensor(0.5))
        z = pyro.sample("z", dist.Bernoulli(p), infer=SEQ)
        if z.item() == 1:
            pyro.sample("w", dist.Normal(loc, 1.0))

    assert_equals_pyro(model, guide, max_plate_nesting=0)


# -- 1b: Monte Carlo enumeration (num_samples) --------------------------------------------------


def categorical_model():
    pyro.sample("z", dist.Categorical(torch.tensor([0.3, 0.7])))


def categorical_guide(n):
    def guide():
        probs = pyro.param("probs", torch.tensor([0.4, 0.6]), constraint=dist.constraints.simplex)
        pyro.sample("z", dist.Categorical(probs), infer=mc(n))

    return guide


MODEL_PROBS = ([0.2, 0.8], [0.3, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])  # three sites of sizes 2, 3, 4
GUIDE_PROBS = ([0.5, 0.5], [0.2, 0.5, 0.3], [0.25, 0.25, 0.25, 0.25])


def three_sites_model():
    for i in range(3):
        pyro.sample(f"z{i}", dist.Categorical(torch.tensor(MODEL_PROBS[i])))


def three_sites_guide(n):
    def guide():
        for i in range(3):
            probs = pyro.param(
                f"q{i}", torch.tensor(GUIDE_PROBS[i]), constraint=dist.constraints.simplex
            )
            pyro.sample(f"z{i}", dist.Categorical(probs), infer=mc(n))

    return guide


def exact_kl(q, p):
    return float((q * (q.log() - p.log())).sum())


def continuous_model(data):
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Beta(2.0, 2.0))
    with pyro.plate("data", len(data)):
        pyro.sample("o", dist.Normal(x * b, 1.0), obs=data)


def continuous_guide(data):
    loc = pyro.param("loc", torch.tensor(0.3))
    conc = pyro.param("conc", torch.tensor(3.0), constraint=dist.constraints.positive)
    pyro.sample("x", dist.Normal(loc, 1.5), infer=mc(20))
    pyro.sample("b", dist.Beta(conc, 2.0), infer=mc(20))


def ancestor_model(data):
    x = pyro.sample("x", dist.Categorical(torch.tensor([0.2, 0.3, 0.5])))
    with pyro.plate("data", len(data)):
        y = pyro.sample("y", dist.Bernoulli(torch.tensor([0.1, 0.5, 0.9])[x]))
        pyro.sample("o", dist.Normal(y + x, 1.0), obs=data)


def ancestor_guide(data):
    qx = pyro.param("qx", torch.tensor([0.3, 0.3, 0.4]), constraint=dist.constraints.simplex)
    qy = pyro.param("qy", torch.tensor([0.2, 0.4, 0.8]), constraint=dist.constraints.unit_interval)
    x = pyro.sample("x", dist.Categorical(qx), infer=mc(5))  # Pyro's diagonal rule: same n
    with pyro.plate("data", len(data)):
        pyro.sample("y", dist.Bernoulli(qy[x]), infer=mc(5))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", ["one", "three", "continuous", "ancestor"])
def test_monte_carlo_enumeration_equals_pyro_on_the_same_seed(case, seed):
    data = torch.tensor([0.2, 1.4, -0.3])
    model, guide, args, nesting = {
        "one": (categorical_model, categorical_guide(100), (), 0),
        "three": (three_sites_model, three_sites_guide(50), (), 0),
        "continuous": (continuous_model, continuous_guide, (data,), 1),
        "ancestor": (ancestor_model, ancestor_guide, (data,), 1),
    }[case]
    assert_equals_pyro(model, guide, *args, max_plate_nesting=nesting, seed=seed)


def test_monte_carlo_svi_steps_equal_pyro():
    assert_svi_equals_pyro(
        ancestor_model, ancestor_guide, torch.tensor([0.2, 1.4, -0.3]), max_plate_nesting=1
    )


def _mean_and_standard_error(values):
    values = torch.tensor(values)
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


@pytest.mark.parametrize("case", ["one", "three"])
def test_monte_carlo_enumeration_is_unbiased_over_seeds(case):
    if case == "one":
        model, guide, n = categorical_model, categorical_guide(100), 200
        exact = exact_kl(torch.tensor([0.4, 0.6]), torch.tensor([0.3, 0.7]))
    else:
        model, guide, n = three_sites_model, three_sites_guide(50), 200
        exact = sum(
            exact_kl(torch.tensor(q), torch.tensor(p)) for q, p in zip(GUIDE_PROBS, MODEL_PROBS)
        )
    elbo = enumdist.EnumELBO(max_plate_nesting=0)
    losses = []
    for seed in range(n):
        pyro.set_rng_seed(seed)
        losses.append(elbo.loss(model, guide))
    mean, standard_error = _mean_and_standard_error(losses)
    assert abs(mean - exact) < 4 * standard_error, (mean, standard_error, exact)
    assert min(losses) > -1.0 and max(losses) < 2.0  # no stray n^k products or wrong weights


def test_monte_carlo_cost_is_additive_in_the_sites():
    """Ten independent sites of 200 samples: the n^k product would be 10^23 bytes."""

    def model():
        for i in range(10):
            pyro.sample(f"z{i}", dist.Categorical(torch.tensor([0.3, 0.7])))

    def guide():
        for i in range(10):
            probs = pyro.param(
                f"q{i}", torch.tensor([0.4, 0.6]), constraint=dist.constraints.simplex
            )
            pyro.sample(f"z{i}", dist.Categorical(probs), infer=mc(200))

    assert_equals_pyro(model, guide, max_plate_nesting=0, memory_budget=2**20)


# -- 1c: masks ------------------------------------------------------------------------------------


def masked_model(data, mask):
    with pyro.plate("data", len(data)), poutine.mask(mask=mask):
        x = pyro.sample("x", dist.Categorical(torch.tensor([0.3, 0.7])))
        y = pyro.sample("y", dist.Categorical(torch.tensor([[0.2, 0.8], [0.6, 0.4]])[x]), infer=PAR)
        pyro.sample("z", dist.Normal(y.double(), 1.0), obs=data)


def masked_guide(data, mask):
    probs = pyro.param("probs", torch.tensor([0.5, 0.5]), constraint=dist.constraints.simplex)
    with pyro.plate("data", len(data)), poutine.mask(mask=mask):
        pyro.sample("x", dist.Categorical(probs), infer=PAR)


def test_masked_guide_enumerated_site_equals_pyro():
    data, mask = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([True, True, False])
    loss = assert_equals_pyro(masked_model, masked_guide, data, mask, max_plate_nesting=1)
    pyro.clear_param_store()
    unmasked_first_two = TraceEnum_ELBO(max_plate_nesting=1).loss(
        masked_model, masked_guide, data[:2], True
    )
    assert loss == pytest.approx(unmasked_first_two, rel=RTOL)


# -- 2: scales, guide samples of model-enumerated sites, long chains -----------------------------


def subsampled_model(data):
    with pyro.plate("a", 10, subsample_size=5, dim=-1):
        x = pyro.sample("x", dist.Bernoulli(0.3))
        with pyro.plate("b", 11, subsample_size=6, dim=-2):
            y = pyro.sample("y", dist.Bernoulli(0.2 + 0.5 * x))
            pyro.sample("o", dist.Normal(y, 1.0), obs=data)


@config_enumerate
def subsampled_guide(data):
    px = pyro.param("px", torch.tensor(0.6), constraint=dist.constraints.unit_interval)
    py = pyro.param("py", torch.tensor(0.4), constraint=dist.constraints.unit_interval)
    with pyro.plate("a", 10, subsample_size=5, dim=-1):
        pyro.sample("x", dist.Bernoulli(px))
        with pyro.plate("b", 11, subsample_size=6, dim=-2):
            pyro.sample("y", dist.Bernoulli(py))


def test_guide_enumerated_sites_under_different_scales_equal_pyro():
    assert_equals_pyro(subsampled_model, subsampled_guide, torch.ones(6, 5), max_plate_nesting=2)


def test_model_enumerated_site_sampled_by_the_guide_uses_the_guide_sample():
    def model(data):
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)), infer=PAR)
            pyro.sample("x", dist.Normal(z.double(), 1.0), obs=data)

    def guide(data):
        logits = pyro.param("logits", torch.tensor([0.1, 0.2, -0.3]))
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Categorical(logits=logits))

    with pytest.warns(UserWarning, match="no sample sites configured"):
        assert_equals_pyro(
            model, guide, torch.tensor([0.3, 1.1, 2.4, -0.2]), max_plate_nesting=1, seed=5
        )


def mean_field_chain_guide(data):
    for t in pyro.markov(range(len(data))):
        shift = 0.01 * (t % 40)
        probs = pyro.param(
            f"q{t}", torch.tensor([0.5 + shift, 0.5 - shift]), constraint=dist.constraints.simplex
        )
        pyro.sample(f"z{t}", dist.Categorical(probs), infer=PAR)


def test_mean_field_guide_over_a_long_chain_is_polynomial():
    """T=30 binary guide sites: aligning every cost with every weight would take 2^30 entries."""
    data = torch.linspace(-1.0, 2.0, 30)
    assert_equals_pyro(
        chain_model, mean_field_chain_guide, data, max_plate_nesting=0, memory_budget=2**20
    )


# -- 3: the memory budget ---------------------------------------------------------------------


def test_memory_budget_refuses_a_monte_carlo_product_before_allocating():
    """A cost over (x1, x3) with the guide chain x1 -> x2 -> x3: eliminating x2 meets n^3."""
    n = 100

    def model():
        x1 = pyro.sample("x1", dist.Normal(0.0, 1.0))
        pyro.sample("x2", dist.Normal(0.0, 1.0))
        pyro.sample("x3", dist.Normal(x1, 1.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.2))
        x1 = pyro.sample("x1", dist.Normal(loc, 1.0), infer=mc(n))
        x2 = pyro.sample("x2", dist.Normal(x1, 1.0), infer=mc(n))
        pyro.sample("x3", dist.Normal(x2, 1.0), infer=mc(n))

    assert_equals_pyro(model, guide, max_plate_nesting=0)  # within the default budget
    with pytest.raises(MemoryBudgetError, match=r"memory_budget.*num_samples"):
        enumdist.EnumELBO(max_plate_nesting=0, memory_budget=n**3 * 8 // 2).loss(model, guide)


# -- combinations -------------------------------------------------------------------------------


def test_sequential_monte_carlo_sites_equal_pyro():
    """``{"enumerate": "sequential", "num_samples": n}``: n runs, each weighted by 1/n."""

    def model():
        pyro.sample("z", dist.Categorical(torch.tensor([0.3, 0.7])))
        pyro.sample("x", dist.Normal(0.0, 1.0))

    def guide():
        probs = pyro.param("probs", torch.tensor([0.4, 0.6]), constraint=dist.constraints.simplex)
        loc = pyro.param("loc", torch.tensor(0.5))
        pyro.sample(
            "z", dist.Categorical(probs), infer={"enumerate": "sequential", "num_samples": 5}
        )
        pyro.sample("x", dist.Normal(loc, 1.0), infer={"enumerate": "sequential", "num_samples": 3})

    assert_equals_pyro(model, guide, max_plate_nesting=0, seed=4)


def particles_model(data):
    a = pyro.sample("a", dist.Bernoulli(0.3))
    with pyro.plate("d", len(data)):
        x = pyro.sample("x", dist.Bernoulli(0.2 + 0.5 * a))
        y = pyro.sample("y", dist.Normal(x, 1.0))
        pyro.sample("o", dist.Normal(y, 1.0), obs=data)


def particles_guide(how):
    def guide(data):
        pa = pyro.param("pa", torch.tensor(0.6), constraint=dist.constraints.unit_interval)
        loc = pyro.param("loc", torch.tensor(0.2))
        pyro.sample("a", dist.Bernoulli(pa), infer={"enumerate": how})
        with pyro.plate("d", len(data)):
            pyro.sample("x", dist.Bernoulli(0.5), infer=mc(4))
            pyro.sample("y", dist.Normal(loc, 1.0))

    return guide


@pytest.mark.parametrize("vectorize", [False, True])
@pytest.mark.parametrize("how", ["sequential", "parallel"])
def test_guide_enumeration_with_several_particles_equals_pyro(how, vectorize):
    assert_equals_pyro(
        particles_model,
        particles_guide(how),
        torch.tensor([0.0, 1.0, 1.0]),
        max_plate_nesting=1 + vectorize,
        num_particles=3,
        vectorize_particles=vectorize,
    )


def test_sequential_sites_on_both_sides_are_refused():
    def model():
        pyro.sample("w", dist.Bernoulli(0.4), infer=SEQ)
        pyro.sample("z", dist.Bernoulli(0.25))

    with pytest.raises(NotImplementedError, match=r"model sites \['w'\].*guide"):
        enumdist.EnumELBO(max_plate_nesting=0).loss(model, bernoulli_guide)


def test_model_enumeration_more_global_than_guide_enumeration_raises_as_pyro():
    def model(data):
        z = pyro.sample("z", dist.Bernoulli(0.3), infer=PAR)
        with pyro.plate("d", len(data)):
            x = pyro.sample("x", dist.Bernoulli(0.2 + 0.5 * z))
            pyro.sample("o", dist.Normal(x, 1.0), obs=data)

    def guide(data):
        with pyro.plate("d", len(data)):
            pyro.sample("x", dist.Bernoulli(0.5), infer=PAR)

    data = torch.tensor([0.0, 1.0, 1.0])
    phrase = "Expected model enumeration to be no more global than guide enumeration"
    with pytest.raises(ValueError, match=phrase):
        TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, data)
    with pytest.raises(ValueError, match=phrase + r".*\['z'\].*guide site 'x' in plate\('d'\)"):
        enumdist.EnumELBO(max_plate_nesting=1).loss(model, guide, data)
