"""Every zoo model: finite TraceEnum_ELBO loss without enumeration warnings, learning, oracles."""

import warnings

import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from tests.engine.zoo import empty_guide
from tests.engine.zoo.models import (
    CASE_NAMES,
    HMM_CLASSES,
    make_case,
    parameters_of,
    piano_roll_batch,
)

torch.set_num_threads(1)


def pyro_loss(model, guide, batch):
    elbo = TraceEnum_ELBO(
        max_plate_nesting=model.max_plate_nesting, strict_enumeration_warning=True
    )
    return elbo.differentiable_loss(model.model, guide or empty_guide, batch)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_loss_is_finite_and_enumeration_is_clean(name):
    pyro.clear_param_store()
    model, guide, batch = make_case(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = pyro_loss(model, guide, batch)
    assert torch.isfinite(loss)
    assert model.num_observations(batch) > 0


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_few_steps_decrease_the_loss(name):
    pyro.clear_param_store()
    model, guide, batch = make_case(name)
    optimizer = torch.optim.Adam(parameters_of(model, guide), lr=0.05)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = pyro_loss(model, guide, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("cls", HMM_CLASSES, ids=lambda c: c.__name__)
def test_padding_is_ignored(cls):
    model = cls(num_keys=5, hidden_dim=3)
    batch = piano_roll_batch()
    noisy = dict(batch, sequences=batch["sequences"].clone())
    padded = torch.arange(6) >= batch["lengths"].unsqueeze(-1)
    noisy["sequences"][padded] = 1.0
    assert torch.allclose(pyro_loss(model, None, batch), pyro_loss(model, None, noisy))


def test_hmm_matches_the_forward_algorithm():
    model = HMM_CLASSES[0](num_keys=5, hidden_dim=3, seed=3).double()
    batch = piano_roll_batch(dtype=torch.float64)
    initial, transition, emission = (
        p.detach() for p in (model.initial, model.transition, model.emission)
    )
    expected = 0.0
    for notes, length in zip(batch["sequences"], batch["lengths"]):
        log_emit = torch.distributions.Bernoulli(emission).log_prob(notes[:, None, :]).sum(-1)
        alpha = initial.log() + log_emit[0]
        for t in range(1, int(length)):
            alpha = torch.logsumexp(alpha[:, None] + transition.log(), 0) + log_emit[t]
        expected += torch.logsumexp(alpha, 0)
    assert torch.allclose(-pyro_loss(model, None, batch), expected, rtol=1e-10)


def test_semisupervised_matches_brute_force():
    model, guide, batch = make_case("SemiSupervisedClassifier", torch.float64)
    log_prior = model.class_probs.detach().log()
    log_lik = (
        torch.distributions.Normal(model.locs.detach(), model.scales.detach())
        .log_prob(batch["features"].unsqueeze(-2))
        .sum(-1)
    )
    joint = log_prior + log_lik
    labeled = batch["is_labeled"]
    expected = (
        joint[labeled].gather(-1, batch["labels"][labeled, None]).sum()
        + torch.logsumexp(joint[~labeled], -1).sum()
    )
    assert torch.allclose(-pyro_loss(model, guide, batch), expected, rtol=1e-10)


def test_initialisation_is_seeded():
    cls = HMM_CLASSES[4]
    a, b, c = cls(5, 3, seed=0), cls(5, 3, seed=0), cls(5, 3, seed=1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_wrong_number_of_keys_is_named():
    model = HMM_CLASSES[0](num_keys=7, hidden_dim=3)
    with pytest.raises(ValueError, match="num_keys"):
        pyro_loss(model, None, piano_roll_batch(num_keys=5))


def enumdist_elbo():
    try:
        import enumdist

        return enumdist.EnumELBO
    except (ImportError, AttributeError):
        pytest.skip("enumdist.EnumELBO is not available yet")


@pytest.mark.parametrize("name", CASE_NAMES)
def test_enumdist_loss_and_grads_equal_pyro(name):
    EnumELBO = enumdist_elbo()
    pyro.clear_param_store()
    model, guide, batch = make_case(name, torch.float64)
    params = parameters_of(model, guide)
    expected = pyro_loss(model, guide, batch)
    expected_grads = torch.autograd.grad(expected, params, allow_unused=True)
    actual = EnumELBO(max_plate_nesting=model.max_plate_nesting).differentiable_loss(
        model.model, guide, batch
    )
    actual_grads = torch.autograd.grad(actual, params, allow_unused=True)
    torch.testing.assert_close(actual, expected, rtol=1e-7, atol=0)
    for a, e in zip(actual_grads, expected_grads):
        if e is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, e, rtol=1e-7, atol=1e-12)
