"""enumdist.DiscreteHMM equals pyro.distributions.DiscreteHMM (float64, values and gradients);
its additions (lengths, Viterbi, posterior samples) equal Pyro on truncated data or brute force."""

import itertools

import pyro
import pyro.distributions as pd
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import enumdist
from enumdist.distributions import DiscreteHMM

S, T = 3, 5
RTOL = 1e-9


def _params(*shapes):
    return [torch.randn(shape, requires_grad=True) for shape in shapes]


def _assert_same(expected, actual, tensors):
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=1e-12)
    weights = torch.rand(expected.shape)  # a non-uniform upstream gradient
    g_expected = torch.autograd.grad((expected * weights).sum(), tensors, allow_unused=True)
    g_actual = torch.autograd.grad((actual * weights).sum(), tensors, allow_unused=True)
    for name, (a, b) in enumerate(zip(g_actual, g_expected)):
        if b is None:
            assert a is None or torch.all(a == 0), name
        else:
            torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-12, msg=f"gradient {name}")


# (initial_logits, transition_logits, observation loc, value) shapes: homogeneous, batched,
# time-varying transitions and/or observations, transitions batched but not time-varying,
# and a value with sample dims left of the batch
SHAPES = {
    "homogeneous": ((S,), (S, S), (S,), (T,)),
    "homogeneous_batched_value": ((S,), (S, S), (S,), (4, T)),
    "batched_init": ((4, S), (S, S), (S,), (4, T)),
    "time_varying_trans": ((S,), (T, S, S), (S,), (2, T)),
    "time_varying_obs": ((S,), (S, S), (T, S), (2, T)),
    "both_time_varying_batched": ((4, S), (4, T, S, S), (4, T, S), (4, T)),
    "batched_trans_not_time": ((S,), (4, 1, S, S), (S,), (4, T)),
    "sample_dims": ((4, S), (T, S, S), (4, 1, S), (2, 4, T)),
}


@pytest.mark.parametrize("shapes", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_log_prob_and_filter_equal_pyro(shapes, method):
    torch.manual_seed(0)
    init, trans, loc = _params(*shapes[:3])
    obs = pd.Normal(loc, torch.tensor(0.7))
    value = torch.randn(shapes[3])

    def theirs():  # built per use: the constructor's normalisation is part of each graph
        return pd.DiscreteHMM(init, trans, obs)

    def ours():
        return DiscreteHMM(init, trans, obs, method=method)

    assert ours().batch_shape == theirs().batch_shape
    assert ours().event_shape == theirs().event_shape
    _assert_same(theirs().log_prob(value), ours().log_prob(value), [init, trans, loc])
    _assert_same(theirs().filter(value).logits, ours().filter(value).logits, [init, trans, loc])
    with torch.no_grad():  # the fast, kernel-backed filter
        torch.testing.assert_close(
            ours().filter(value).probs, theirs().filter(value).probs, rtol=RTOL, atol=1e-12
        )


def _observation_dists():
    k = 4
    return {
        "bernoulli_keys": (
            lambda p: pd.Bernoulli(logits=p).to_event(1),
            (S, k),
            lambda n: torch.randint(0, 2, (n, T, k)).double(),
        ),
        # logits exactly 0 (probs 1/2): where a hand-made softplus gets the gradient wrong
        "bernoulli_keys_zero_logits": (
            lambda p: pd.Bernoulli(logits=p * (p > 0)).to_event(1),
            (S, k),
            lambda n: torch.randint(0, 2, (n, T, k)).double(),
        ),
        "bernoulli_probs_keys": (
            lambda p: pd.Bernoulli(probs=torch.sigmoid(p)).to_event(1),
            (S, k),
            lambda n: torch.randint(0, 2, (n, T, k)).double(),
        ),
        "categorical": (
            lambda p: pd.Categorical(logits=p),
            (S, k),
            lambda n: torch.randint(0, k, (n, T)),
        ),
        "normal": (lambda p: pd.Normal(p, p.exp()), (S,), lambda n: torch.randn(n, T)),
        "normal_keys": (
            lambda p: pd.Normal(p, 1.5).to_event(1),
            (S, k),
            lambda n: torch.randn(n, T, k),
        ),
        "poisson": (
            lambda p: pd.Poisson(p.exp()),
            (S,),
            lambda n: torch.poisson(torch.full((n, T), 2.0)),
        ),
        "poisson_time_varying": (
            lambda p: pd.Poisson(p.exp()),
            (T, S),
            lambda n: torch.poisson(torch.full((n, T), 2.0)),
        ),
    }


@pytest.mark.parametrize("family", _observation_dists().keys())
def test_observation_families_equal_pyro(family):
    torch.manual_seed(1)
    make, shape, data = _observation_dists()[family]
    init, trans, obs_param = _params((S,), (S, S), shape)
    value = data(6)
    expected = pd.DiscreteHMM(init, trans, make(obs_param)).log_prob(value)
    actual = DiscreteHMM(init, trans, make(obs_param)).log_prob(value)
    _assert_same(expected, actual, [init, trans, obs_param])


@pytest.mark.parametrize("time_varying", [False, True], ids=["homogeneous", "time_varying"])
def test_lengths_equal_pyro_on_truncated_sequences(time_varying):
    torch.manual_seed(2)
    init, trans, probs = _params((S,), (T, S, S) if time_varying else (S, S), (S, 2))
    value = torch.randint(0, 2, (4, T, 2)).double()
    lengths = torch.tensor([5, 2, 1, 0])
    obs = pd.Bernoulli(logits=probs).to_event(1)
    actual = DiscreteHMM(init, trans, obs, lengths=lengths).log_prob(value)
    expected = []
    for n, length in enumerate(lengths.tolist()):
        if length == 0:
            expected.append(torch.zeros(()))
            continue
        a = trans[:length] if time_varying else trans
        expected.append(pd.DiscreteHMM(init, a, obs).log_prob(value[n, :length]))
    _assert_same(torch.stack(expected), actual, [init, trans, probs])
    with torch.no_grad():
        # filter: the last step of each (non-empty) sequence
        hmm = DiscreteHMM(init, trans, obs, lengths=lengths.clamp(min=1))
        for n, length in enumerate(lengths.clamp(min=1).tolist()):
            a = trans[:length] if time_varying else trans
            torch.testing.assert_close(
                hmm.filter(value).logits[n],
                pd.DiscreteHMM(init, a, obs).filter(value[n, :length]).logits,
            )


def test_lengths_are_checked():
    init, trans, loc = _params((S,), (S, S), (S,))
    with pytest.raises(ValueError, match="at most the number of steps"):
        DiscreteHMM(init, trans, pd.Normal(loc, 1.0), lengths=torch.tensor([6])).log_prob(
            torch.randn(1, T)
        )
    with pytest.raises(ValueError, match="non-negative integers"):
        DiscreteHMM(init, trans, pd.Normal(loc, 1.0), lengths=torch.tensor([-1]))


# -- decoding against brute force ------------------------------------------------------------


def _brute_force_paths(hmm, value, length):
    """{path: log p(x_0..x_{L-1}, y)} for one sequence, x_{-1} summed out, by enumeration."""
    init = hmm.initial_logits
    trans = hmm.transition_logits
    trans = trans if trans.dim() == 3 else trans.expand(length, S, S)
    e = hmm.observation_dist.log_prob(value[:length].unsqueeze(-1))  # [L, S]
    e = e.expand(length, S)
    scores = {}
    for xs in itertools.product(range(S), repeat=length):
        score = torch.logsumexp(init + trans[0][:, xs[0]], 0) + e[0, xs[0]]
        for t in range(1, length):
            score = score + trans[t][xs[t - 1], xs[t]] + e[t, xs[t]]
        scores[xs] = score
    return scores


@pytest.fixture
def tiny_hmm():
    torch.manual_seed(3)
    init, trans, loc = (x.detach() for x in _params((S,), (T, S, S), (S,)))
    value = torch.randn(3, T)
    lengths = torch.tensor([5, 4, 2])
    return DiscreteHMM(init, trans, pd.Normal(loc, 1.0), lengths=lengths), value, lengths


@pytest.mark.parametrize("method", ["sequential", "scan"])
def test_viterbi_equals_brute_force(tiny_hmm, method):
    hmm, value, lengths = tiny_hmm
    hmm.method = method  # "scan": the blocked max-plus Viterbi
    path = hmm.viterbi(value)
    log_z = hmm.log_prob(value)
    for n, length in enumerate(lengths.tolist()):
        scores = _brute_force_paths(hmm, value[n], length)
        best = max(scores, key=lambda xs: scores[xs])
        assert path.states[n].tolist() == list(best) + [0] * (T - length)
        torch.testing.assert_close(path.log_joint[n], scores[best], rtol=RTOL, atol=0)
        torch.testing.assert_close(
            path.log_posterior[n], scores[best] - log_z[n], rtol=RTOL, atol=1e-12
        )


def test_posterior_samples_follow_the_exact_posterior(tiny_hmm):
    """Chi-square goodness of fit of 6000 joint draws against the enumerated posterior, and
    each draw's reported log-probabilities against its brute-force score."""
    hmm, value, lengths = tiny_hmm
    draws = 6000
    path = hmm.sample_posterior(value, (draws,), generator=torch.Generator().manual_seed(0))
    assert path.states.shape == (draws, 3, T)
    log_z = hmm.log_prob(value)
    n, length = 2, 2  # 9 paths: enough draws per cell for the test
    scores = _brute_force_paths(hmm, value[n], length)
    paths = list(scores)
    expected = torch.stack([scores[p] - log_z[n] for p in paths]).exp() * draws
    seen = [tuple(x) for x in path.states[:, n, :length].tolist()]
    observed = torch.tensor([seen.count(p) for p in paths], dtype=torch.float64)
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 26.1, (observed, expected)  # 99.9% quantile of chi-square with 8 dof
    assert bool((path.states[:, n, length:] == 0).all())
    for i in range(20):  # the reported scores are the paths' own
        for m, size in enumerate(lengths.tolist()):
            xs = tuple(path.states[i, m, :size].tolist())
            score = _brute_force_paths(hmm, value[m], size)[xs] if m == n else None
            if score is not None:
                torch.testing.assert_close(path.log_joint[i, m], score, rtol=RTOL, atol=0)
                torch.testing.assert_close(
                    path.log_posterior[i, m], score - log_z[m], rtol=RTOL, atol=1e-12
                )


# -- inside a model ----------------------------------------------------------------------------


def _model(hmm_class, data):
    init = pyro.param("init", torch.zeros(S))
    trans = pyro.param("trans", torch.eye(S) * 2.0)
    probs = pyro.param(
        "probs",
        torch.full((S, data.shape[-1]), 0.3) + torch.arange(S)[:, None] / 10,
        constraint=pd.constraints.unit_interval,
    )
    obs = pd.Bernoulli(probs).to_event(1)
    with pyro.plate("sequences", data.shape[0]):
        pyro.sample("y", hmm_class(init, trans, obs), obs=data)


def _guide(hmm_class, data):
    pass


def _svi_steps(hmm_class, data, steps=3):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(_model, _guide, Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step(hmm_class, data) for _ in range(steps)]
    elbo = Trace_ELBO()
    loss = elbo.loss_and_grads(_model, _guide, hmm_class, data)
    store = pyro.get_param_store()
    grads = {k: store.get_param(k).unconstrained().grad.clone() for k in ("init", "trans", "probs")}
    params = {k: store.get_param(k).detach().clone() for k in ("init", "trans", "probs")}
    return [*losses, loss], grads, params


def test_trace_elbo_svi_inside_plate_equals_pyro():
    torch.manual_seed(4)
    data = torch.randint(0, 2, (5, 7, 3)).double()
    expected = _svi_steps(pd.DiscreteHMM, data)
    actual = _svi_steps(enumdist.DiscreteHMM, data)
    assert actual[0] == pytest.approx(expected[0], rel=RTOL)
    for got, want in zip(actual[1:], expected[1:]):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-8, atol=1e-12, msg=name)


def test_is_a_pyro_discrete_hmm_and_expands():
    init, trans, loc = _params((S,), (S, S), (S,))
    hmm = enumdist.DiscreteHMM(
        init, trans, pd.Normal(loc, 1.0), lengths=torch.tensor([3]), duration=T
    )
    assert isinstance(hmm, pd.DiscreteHMM)
    wide = hmm.expand([4])
    assert type(wide) is DiscreteHMM and wide.batch_shape == (4,)
    assert wide.lengths.tolist() == [3] * 4
    assert hmm.sample().shape == (1, T)


def test_readme_long_chain_example_runs():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"## Long chains\n.*?```python\n(.*?)```", readme, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    hmm, y = namespace["hmm"], namespace["y"]
    assert namespace["log_p"].shape == (2,)
    assert namespace["best"].states.shape == (2, 500)
    assert bool((namespace["best"].states[1, 300:] == 0).all())
    assert namespace["draws"].states.shape == (3, 2, 500)
    truncated = pd.DiscreteHMM(
        hmm.initial_logits, hmm.transition_logits, hmm.observation_dist
    ).log_prob(y[1, :300])
    torch.testing.assert_close(namespace["log_p"][1], truncated, rtol=1e-5, atol=0)
