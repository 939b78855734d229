"""compute_marginals: equals Pyro where Pyro is right, and brute force where it is not."""

import pyro
import torch
from pyro.infer import TraceEnum_ELBO

import enumdist
from tests.engine.brute_force import joint_posterior
from tests.engine.zoo import CASES, empty_guide, global_outside_plate


def test_marginals_equal_pyro_on_chains_and_nested_plates():
    for case in [
        c
        for c in CASES
        if c.name in ("hmm_masked", "factorial_hmm", "nested_topics", "bernoulli_hmm_nested_plates")
    ]:
        pyro.clear_param_store()
        expected = TraceEnum_ELBO(max_plate_nesting=case.max_plate_nesting).compute_marginals(
            case.model, empty_guide, *case.args
        )
        actual = enumdist.EnumELBO(max_plate_nesting=case.max_plate_nesting).compute_marginals(
            case.model, empty_guide, *case.args
        )
        assert expected.keys() == actual.keys(), case.name
        for name in expected:
            e = expected[name].probs if hasattr(expected[name], "probs") else None
            torch.testing.assert_close(
                actual[name].probs.expand_as(e), e, rtol=1e-7, atol=1e-12, msg=f"{case.name}:{name}"
            )


def test_marginals_exact_where_global_and_local_interact():
    """Pyro issue #1460: a global enumerated variable interacting with local ones."""
    data = torch.tensor([0.3, -1.2, 2.0, 0.1])
    assignments, probs = joint_posterior(
        global_outside_plate, (data,), {"g": ((), 2), "z": ((4,), 3)}
    )
    exact_g = torch.stack(
        [sum(p for a, p in zip(assignments, probs) if a["g"] == v) for v in range(2)]
    )
    exact_z = torch.stack(
        [
            torch.stack(
                [sum(p for a, p in zip(assignments, probs) if a["z"][i] == v) for v in range(3)]
            )
            for i in range(4)
        ]
    )
    marginals = enumdist.EnumELBO(max_plate_nesting=1).compute_marginals(
        global_outside_plate, empty_guide, data
    )
    torch.testing.assert_close(marginals["g"].probs.reshape(2), exact_g, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(marginals["z"].probs.reshape(4, 3), exact_z, rtol=1e-9, atol=1e-12)
    pyro_z = TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(
        global_outside_plate, empty_guide, data
    )["z"]
    pyro_z = torch.softmax(pyro_z.logits, -1).reshape(-1, 3)
    print("max |pyro - exact| for z:", float((pyro_z.detach().expand(4, 3) - exact_z).abs().max()))


def test_marginals_of_a_model_without_latents_are_empty():
    import pyro.distributions as dist

    def model(data):
        loc = pyro.param("loc", torch.tensor(0.0, dtype=torch.float64))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=data)

    data = torch.tensor([0.3, -1.2])
    expected = TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(model, empty_guide, data)
    actual = enumdist.EnumELBO(
        max_plate_nesting=1, strict_enumeration_warning=False
    ).compute_marginals(model, empty_guide, data)
    assert expected == {} and actual == {}


def test_marginals_have_the_sites_own_distribution_type():
    """Bernoulli and OneHotCategorical sites get Bernoulli / OneHotCategorical marginals."""
    import pyro.distributions as dist
    from pyro.ops.indexing import Vindex

    def model(data):
        p = pyro.param("p_flip", torch.tensor(0.35, dtype=torch.float64))
        probs = pyro.param(
            "probs_oh", torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], dtype=torch.float64)
        )
        locs = pyro.param(
            "locs_oh", torch.tensor([[-1.0, 0.5, 2.0], [0.0, 1.0, -2.0]], dtype=torch.float64)
        )
        flip = pyro.sample("flip", dist.Bernoulli(p), infer={"enumerate": "parallel"})
        with pyro.plate("data", len(data)):
            onehot = pyro.sample(
                "onehot",
                dist.OneHotCategorical(Vindex(probs)[flip.long()]),
                infer={"enumerate": "parallel"},
            )
            k = onehot.max(-1)[1]
            pyro.sample("x", dist.Normal(Vindex(locs)[flip.long(), k], 1.0), obs=data)

    data = torch.tensor([0.3, -1.2, 2.0, 0.7])
    expected = TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(model, empty_guide, data)
    actual = enumdist.EnumELBO(max_plate_nesting=1).compute_marginals(model, empty_guide, data)
    assert list(actual) == list(expected) == ["flip", "onehot"]
    for name in expected:
        assert type(actual[name]) is type(expected[name]), name
        assert actual[name].batch_shape == expected[name].batch_shape, name
        torch.testing.assert_close(
            actual[name].probs, expected[name].probs.detach(), rtol=1e-7, atol=1e-12, msg=name
        )
