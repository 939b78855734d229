"""Fast chain path: equals Pyro's TraceEnum_ELBO / infer_discrete on the python-loop chain."""

import itertools

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from enumdist.engine.chain import (
    _prepare,
    _scaled,
    _scan_backward,
    _scan_forward,
    _sequential_backward,
    _sequential_forward,
    _transition_probs,
    chain_log_likelihood,
    chain_map,
    chain_sample,
)
from enumdist.reference_hmm import chain_inputs, chain_model, loop_model
from tests.engine.zoo import empty_guide

NUM_STATES = 3


def piano_rolls(num_sequences=5, max_length=7, num_keys=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    rolls = (torch.rand(num_sequences, max_length, num_keys, generator=generator) < 0.4).double()
    lengths = torch.tensor([7, 3, 1, 6, 7])[:num_sequences]
    return rolls * (torch.arange(max_length) < lengths[:, None]).unsqueeze(-1), lengths


def loss_and_grads(elbo, model, *args):
    pyro.clear_param_store()
    loss = elbo.loss_and_grads(model, empty_guide, *args)
    grads = {name: pyro.param(name).unconstrained().grad.clone() for name in ("probs_x", "probs_y")}
    return loss, grads


@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_loss_and_grads_equal_trace_enum_elbo(method):
    rolls, lengths = piano_rolls()
    expected, expected_grads = loss_and_grads(
        TraceEnum_ELBO(max_plate_nesting=2), loop_model, rolls, lengths, NUM_STATES
    )
    actual, actual_grads = loss_and_grads(
        Trace_ELBO(), chain_model, rolls, lengths, NUM_STATES, method
    )
    assert actual == pytest.approx(expected, rel=1e-7)
    for name in expected_grads:
        assert torch.allclose(actual_grads[name], expected_grads[name], rtol=1e-7, atol=1e-12), name


def brute_force_log_z(init, trans, emissions, lengths):
    out = []
    for n, length in enumerate(lengths.tolist()):
        paths = []
        for xs in itertools.product(range(init.shape[0]), repeat=length):
            value = init[xs[0]] + emissions[n, 0, xs[0]]
            for t in range(1, length):
                a = trans if trans.dim() == 2 else trans[t]
                value = value + a[xs[t - 1], xs[t]] + emissions[n, t, xs[t]]
            paths.append(value)
        out.append(torch.logsumexp(torch.stack(paths), 0))
    return torch.stack(out)


@pytest.mark.parametrize("method", ["sequential", "scan"])
@pytest.mark.parametrize("time_varying", [False, True], ids=["homogeneous", "time_varying"])
def test_custom_adjoint_equals_autograd_of_brute_force(method, time_varying):
    torch.manual_seed(0)
    n, t, s = 3, 5, 3
    init = torch.randn(s, requires_grad=True)
    trans = torch.randn(*((t,) if time_varying else ()), s, s, requires_grad=True)
    emissions = torch.randn(n, t, s, requires_grad=True)
    lengths = torch.tensor([5, 3, 1])
    weights = torch.tensor([1.0, 2.0, -0.5])  # a non-uniform upstream gradient
    expected = brute_force_log_z(init, trans, emissions, lengths)
    expected_grads = torch.autograd.grad((expected * weights).sum(), [init, trans, emissions])
    actual = chain_log_likelihood(init, trans, emissions, lengths, method)
    actual_grads = torch.autograd.grad((actual * weights).sum(), [init, trans, emissions])
    assert torch.allclose(actual, expected, rtol=1e-10)
    for a, e in zip(actual_grads, expected_grads):
        assert torch.allclose(a, e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("block", [None, 1, 3, 64, 299])
@pytest.mark.parametrize("time_varying", [False, True], ids=["homogeneous", "time_varying"])
def test_scan_messages_equal_sequential(block, time_varying):
    torch.manual_seed(0)
    n, t, s = 3, 300, 4
    init, emissions = torch.randn(s), torch.randn(n, t, s)
    trans = torch.randn(t if time_varying else 1, s, s)
    valid = _prepare(
        init, trans if time_varying else trans[0], emissions, torch.tensor([300, 137, 1])
    )
    inputs = (*_transition_probs(trans), *_scaled(emissions), valid)
    h_alpha, c_alpha, blocks = _scan_forward(init, *inputs, block=block)
    for sequential, scan in [
        (_sequential_forward(init, *inputs), (h_alpha, c_alpha)),
        (_sequential_backward(*inputs), _scan_backward(*inputs, blocks, block=block)),
    ]:
        expected, actual = (torch.log(h) + c[..., None] for h, c in (sequential, scan))
        assert torch.allclose(actual, expected, rtol=1e-10)


def test_long_chain_scan_equals_sequential_with_grads():
    torch.manual_seed(0)
    n, t, s = 3, 500, 4
    args = [torch.randn(s), torch.randn(s, s), torch.randn(n, t, s)]
    lengths = torch.tensor([137, 500, 499])
    results = []
    for method in ("sequential", "scan"):
        leaves = [a.clone().requires_grad_() for a in args]
        log_z = chain_log_likelihood(*leaves, lengths, method)
        results.append([log_z, *torch.autograd.grad(log_z.sum(), leaves)])
    for seq, scan in zip(*results):
        assert torch.allclose(seq, scan, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("time_varying", [False, True], ids=["homogeneous", "time_varying"])
def test_scan_equals_sequential_on_ragged_chain(time_varying):
    """Values and all three gradients, unsorted ragged lengths, a non-uniform upstream grad."""
    generator = torch.Generator().manual_seed(1)
    n, t, s = 4, 300, 5
    args = [
        torch.randn(*shape, generator=generator, dtype=torch.float64)
        for shape in [(s,), ((t,) if time_varying else ()) + (s, s), (n, t, s)]
    ]
    lengths = torch.tensor([211, 300, 1, 299])
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    results = {}
    for method in ("sequential", "scan"):
        leaves = [a.clone().requires_grad_() for a in args]
        log_z = chain_log_likelihood(*leaves, lengths, method)
        results[method] = [log_z, *torch.autograd.grad((log_z * weights).sum(), leaves)]
    for name, seq, scan in zip(["log_z", "init", "trans", "emissions"], *results.values()):
        assert torch.allclose(scan, seq, rtol=1e-7, atol=1e-12), name
    assert torch.all(results["scan"][3][2, 1:] == 0)  # steps past a length get no gradient


def test_chain_map_equals_pyro_infer_discrete():
    rolls, lengths = piano_rolls()
    decoder = pyro.infer.infer_discrete(loop_model, first_available_dim=-3, temperature=0)
    trace = poutine.trace(decoder).get_trace(rolls, lengths, NUM_STATES)
    expected = torch.stack(
        [trace.nodes[f"x_{t}"]["value"].reshape(-1) for t in range(rolls.shape[1])], dim=1
    )
    with torch.no_grad():
        actual = chain_map(*chain_inputs(rolls, NUM_STATES), lengths)
    assert torch.equal(actual, expected)


def test_chain_sample_follows_posterior_marginals():
    """Posterior marginal of x_t from 4000 FFBS draws vs exp(alpha + beta - log Z)."""
    torch.manual_seed(0)
    s, t, draws = 3, 4, 4000
    init, trans, emissions = torch.randn(s), torch.randn(s, s), torch.randn(1, t, s)
    emissions_rep = emissions.expand(draws, t, s)
    states = chain_sample(init, trans, emissions_rep, generator=torch.Generator().manual_seed(0))
    emissions_leaf = emissions.clone().requires_grad_()
    log_z = chain_log_likelihood(init, trans, emissions_leaf)
    (marginals,) = torch.autograd.grad(log_z.sum(), [emissions_leaf])  # d log Z / d e = gamma
    empirical = torch.nn.functional.one_hot(states, s).double().mean(0)
    assert torch.allclose(empirical, marginals[0], atol=0.03)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="trans_logits"):
        chain_log_likelihood(torch.zeros(3), torch.zeros(2, 2), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="lengths"):
        chain_log_likelihood(
            torch.zeros(3), torch.zeros(3, 3), torch.zeros(1, 4, 3), torch.tensor([5])
        )
