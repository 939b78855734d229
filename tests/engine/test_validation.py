"""Validation parity with Pyro: where TraceEnum_ELBO (float64, validation on) raises, EnumELBO
raises the same exception class with Pyro's key phrase and a fix; where it warns, EnumELBO warns;
and the checks run on every call, as Pyro's do."""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.ops.jit
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate

import enumdist
from enumdist.engine.errors import (
    EnumdistError,
    EnumerationError,
    InvalidArgumentError,
    MarkovHistoryError,
    ModelGuideMismatchError,
    ShardError,
    SiteShapeError,
    UnsupportedEnumerationError,
)

ENUM = {"enumerate": "parallel"}
RTOL = 1e-7


def no_guide(*args, **kwargs):
    pass


def pyro_loss(model, guide, *args, max_plate_nesting=1):
    return TraceEnum_ELBO(max_plate_nesting=max_plate_nesting).loss(model, guide, *args)


def ours_loss(model, guide, *args, max_plate_nesting=1, **options):
    return enumdist.EnumELBO(max_plate_nesting=max_plate_nesting, **options).loss(
        model, guide, *args
    )


def messages(caught):
    return [str(w.message) for w in caught]


# -- pyro.markov history shorter than the model's dependencies (issue 10 1d, issue 11) -------


def second_order_chain(history, latent="bernoulli"):
    """``x_t | x_{t-2}, x_{t-1}``, observed through Normal noise."""
    trans = torch.tensor([[[0.7, 0.3], [0.4, 0.6]], [[0.2, 0.8], [0.5, 0.5]]])

    def site(name, probs):
        if latent == "bernoulli":
            return pyro.sample(name, dist.Bernoulli(probs[..., 1]), infer=ENUM).long()
        return pyro.sample(name, dist.Categorical(probs), infer=ENUM)

    def model(data):
        x0 = site("x_0", torch.tensor([0.6, 0.4]))
        pyro.sample("y_0", dist.Normal(x0.double(), 1.0), obs=data[0])
        x1 = site("x_1", trans[0][x0])
        pyro.sample("y_1", dist.Normal(x1.double(), 1.0), obs=data[1])
        xs = [x0, x1]
        for t in pyro.markov(range(2, len(data)), history=history):
            xs.append(site(f"x_{t}", trans[xs[-2], xs[-1]]))
            pyro.sample(f"y_{t}", dist.Normal(xs[-1].double(), 1.0), obs=data[t])

    return model


MARKOV_DATA = torch.tensor([0.1, 0.9, 0.3, 1.2, -0.3])


@pytest.mark.parametrize("history", [0, 1])
def test_markov_history_too_short_raises_as_pyro(history):
    model = second_order_chain(history)
    with pytest.raises(ValueError, match="Enumeration dim conflict"):
        pyro_loss(model, no_guide, MARKOV_DATA, max_plate_nesting=0)
    with pytest.raises(
        MarkovHistoryError,
        match=r"Enumeration dim conflict at model site 'x_\d'"
        r".*last used by site 'x_\d'.*Try increasing pyro.markov history size",
    ):
        ours_loss(model, no_guide, MARKOV_DATA, max_plate_nesting=0)


@pytest.mark.parametrize("history", [0, 1])
def test_markov_history_too_short_categorical_is_refused(history):
    """Pyro fails here with a bare AssertionError inside Categorical.log_prob; we refuse with
    the ValueError Pyro means."""
    with pytest.raises(MarkovHistoryError, match="Try increasing pyro.markov history size"):
        ours_loss(
            second_order_chain(history, "categorical"), no_guide, MARKOV_DATA, max_plate_nesting=0
        )


@pytest.mark.parametrize("latent", ["bernoulli", "categorical"])
def test_markov_history_long_enough_equals_pyro(latent):
    model = second_order_chain(2, latent)
    expected = pyro_loss(model, no_guide, MARKOV_DATA, max_plate_nesting=0)
    assert ours_loss(model, no_guide, MARKOV_DATA, max_plate_nesting=0) == pytest.approx(
        expected, rel=RTOL
    )


# -- site batch shapes against their plates (issue 11.1) ----------------------------------------


def mixture(data, n):
    w = pyro.param("w", torch.ones(3) / 3, constraint=dist.constraints.simplex)
    locs = pyro.param("locs", torch.tensor([-2.0, 0.0, 2.0]))
    with pyro.plate("data", n):
        z = pyro.sample("z", dist.Categorical(w), infer=ENUM)
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)


def two_state(emission):
    def model(data, n):
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2), infer=ENUM)
            pyro.sample("x", emission(z.double()), obs=data)

    return model


def hmm(data, n):
    trans = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    with pyro.plate("sequences", n, dim=-1):
        x = 0
        for t in pyro.markov(range(data.shape[1])):
            x = pyro.sample(f"x_{t}", dist.Categorical(trans[x]), infer=ENUM)
            pyro.sample(f"y_{t}", dist.Bernoulli(0.2 + 0.6 * x.double()), obs=data[:, t])


def nested(data, n):
    with pyro.plate("outer", data.shape[0]), pyro.plate("inner", n):
        z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2), infer=ENUM)
        pyro.sample("x", dist.Normal(z.double(), 1.0), obs=data)


def plate_of_40(data, n):
    with pyro.plate("data", n):
        z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2), infer=ENUM)
        pyro.sample("x", dist.Normal(z.double(), 1.0), obs=data)


BAD_PLATES = {  # name: (model, data, plate size, max_plate_nesting, expected message)
    "normal 100 in 60": (
        mixture,
        torch.randn(100),
        60,
        1,
        (
            r"site 'x'.*size 100 where the distribution has size 60 \(plate 'data'\)"
            r".*pyro.plate\('data', 100\)"
        ),
    ),
    "bernoulli 100 in 60": (
        two_state(lambda z: dist.Bernoulli(0.3 + 0.4 * z)),
        torch.randint(0, 2, (100,)).double(),
        60,
        1,
        r"plate 'data'",
    ),
    "poisson 100 in 60": (
        two_state(lambda z: dist.Poisson(1.0 + z)),
        torch.randint(0, 4, (100,)).double(),
        60,
        1,
        r"plate 'data'",
    ),
    "hmm 6 sequences in 5": (
        hmm,
        torch.randint(0, 2, (6, 4)).double(),
        5,
        1,
        (
            r"site 'y_0'.*size 6 where the distribution has size 5 "
            r"\(plate 'sequences'\)"
        ),
    ),
    "hmm 6 sequences in 7": (
        hmm,
        torch.randint(0, 2, (6, 4)).double(),
        7,
        1,
        r"site 'y_0'.*plate 'sequences'",
    ),
    "nested plates, data on the wrong dim": (
        nested,
        torch.randn(3, 5),
        5,
        2,
        r"site 'x'.*size 5 where the distribution has size 3 \(plate 'outer'\)",
    ),
    "data (40, 1) in a plate of 40": (
        plate_of_40,
        torch.randn(40, 1),
        40,
        1,
        r"site 'x'.*dim -2.*enumeration dim",
    ),
}


@pytest.mark.parametrize("case", BAD_PLATES, ids=list(BAD_PLATES))
def test_plate_sizes_are_checked_against_the_data(case):
    model, data, size, nesting, message = BAD_PLATES[case]
    with pytest.raises(ValueError, match="not broadcastable"):
        pyro_loss(model, no_guide, data, size, max_plate_nesting=nesting)
    pyro.clear_param_store()
    with pytest.raises(SiteShapeError, match="not broadcastable") as error:
        ours_loss(model, no_guide, data, size, max_plate_nesting=nesting)
    assert error.match(message)


def test_data_on_an_enumeration_dim_is_refused():
    """Data (2, 40) for a plate of 40: its dim -2 meets the enumeration dim of 'z'. Pyro
    computes a number (the data rows paired with z's values); we refuse, naming the site."""
    data = torch.randn(2, 40)
    pyro_loss(plate_of_40, no_guide, data, 40)  # no error in Pyro
    with pytest.raises(
        SiteShapeError,
        match=r"site 'x'.*shape \(2, 40\).*dim -2 \(size 2\).*"
        r"left of max_plate_nesting=1.*pyro.plate\(..., dim=\)",
    ):
        ours_loss(plate_of_40, no_guide, data, 40)


def test_subsampled_plate_over_full_data_names_the_indices():
    def model(data):
        with pyro.plate("data", 100, subsample_size=10):
            z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2), infer=ENUM)
            pyro.sample("x", dist.Normal(z.double(), 1.0), obs=data)

    with pytest.raises(ValueError, match="not broadcastable"):
        pyro_loss(model, no_guide, torch.randn(100))
    with pytest.raises(SiteShapeError, match=r"subsampled from 100.*subsample indices"):
        ours_loss(model, no_guide, torch.randn(100))


# -- model and guide must agree (issue 10 1f) ---------------------------------------------------


def test_site_shape_differs_between_model_and_guide():
    def model(data):
        with pyro.plate("q", 1, dim=-2), pyro.plate("p", 2, dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z.sum(), 1.0), obs=data)

    def guide(data):
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.zeros(2, 1)), 1.0))

    with pytest.raises(ValueError, match="Model and guide shapes disagree at site 'z'"):
        pyro_loss(model, guide, torch.tensor(0.5), max_plate_nesting=2)
    with pytest.raises(
        ModelGuideMismatchError,
        match=r"Model and guide shapes disagree at site 'z': \(1, 2\) vs \(2, 1\)",
    ):
        ours_loss(model, guide, torch.tensor(0.5), max_plate_nesting=2)


def coin(data):
    z = pyro.sample("z", dist.Bernoulli(0.3), infer=ENUM)
    pyro.sample("x", dist.Normal(z, 1.0), obs=data)


def test_factor_in_guide_needs_has_rsample_as_in_pyro():
    def guide(data):
        pyro.factor("f", torch.tensor(0.7))

    with pytest.raises(ValueError, match="missing specification of has_rsample"):
        pyro_loss(coin, guide, torch.tensor(0.5), max_plate_nesting=0)
    with pytest.raises(
        ModelGuideMismatchError,
        match=r'At guide site pyro.factor\("f",...\), '
        "missing specification of has_rsample",
    ):
        ours_loss(coin, guide, torch.tensor(0.5), max_plate_nesting=0)


@pytest.mark.parametrize("has_rsample", [True, False])
def test_factor_in_guide_with_has_rsample_equals_pyro(has_rsample):
    def guide(data):
        pyro.factor("f", torch.tensor(0.7), has_rsample=has_rsample)

    expected = pyro_loss(coin, guide, torch.tensor(0.5), max_plate_nesting=0)
    assert ours_loss(coin, guide, torch.tensor(0.5), max_plate_nesting=0) == pytest.approx(
        expected, rel=RTOL
    )


def global_mean(data):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        c = pyro.sample("c", dist.Bernoulli(0.3), infer=ENUM)
        pyro.sample("x", dist.Normal(z + c, 1.0), obs=data)


def guide_with_extra_plate(data):
    loc = pyro.param("loc", torch.tensor(0.0))
    with pyro.plate("extra", 3):
        pass
    pyro.sample("z", dist.Normal(loc, 1.0))


@pytest.mark.parametrize(
    "guide, phrase",
    [
        (no_guide, "Found vars in model but not guide: {'z'}"),
        (guide_with_extra_plate, "Found plate statements in guide but not model: {'extra'}"),
    ],
    ids=["latent not in guide", "plate only in guide"],
)
def test_model_guide_warnings_as_pyro(guide, phrase):
    data = torch.randn(4)
    for loss in (pyro_loss, ours_loss):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss(global_mean, guide, data)
        assert any(m.startswith(phrase) for m in messages(caught)), (loss, messages(caught))
        with warnings.catch_warnings(record=True) as caught, pyro.validation_enabled(False):
            warnings.simplefilter("always")
            loss(global_mean, guide, data)
        assert not any(m.startswith(phrase) for m in messages(caught)), loss


# -- a chain with nothing observed (issue 10, crashes) ------------------------------------------


@pytest.mark.parametrize("steps", [3, 10, 12])
def test_unobserved_chain_equals_pyro(steps):
    @config_enumerate
    def model():
        trans = pyro.param(
            "trans", torch.tensor([[0.9, 0.1], [0.3, 0.7]]), constraint=dist.constraints.simplex
        )
        x = 0
        for t in pyro.markov(range(steps)):
            x = pyro.sample(f"x_{t}", dist.Categorical(trans[x]))

    results = []
    for elbo in (TraceEnum_ELBO(max_plate_nesting=0), enumdist.EnumELBO(max_plate_nesting=0)):
        pyro.clear_param_store()
        loss = elbo.differentiable_loss(model, no_guide)
        (grad,) = torch.autograd.grad(loss, [pyro.param("trans").unconstrained()])
        results.append((loss.detach(), grad))
    (expected_loss, expected_grad), (loss, grad) = results
    assert abs(float(expected_loss)) < 1e-12 and abs(float(loss)) < 1e-12
    torch.testing.assert_close(grad, expected_grad, rtol=RTOL, atol=1e-12)


# -- exception classes and warnings (issue 10; issue 13 "Errors") ------------------------------


def test_errors_share_one_base_and_pyros_builtin_classes():
    assert issubclass(EnumerationError, EnumdistError) and issubclass(EnumerationError, ValueError)
    for error in (
        SiteShapeError,
        MarkovHistoryError,
        ModelGuideMismatchError,
        InvalidArgumentError,
    ):
        assert issubclass(error, EnumerationError)
    assert issubclass(UnsupportedEnumerationError, EnumdistError)
    assert issubclass(UnsupportedEnumerationError, NotImplementedError)
    assert issubclass(ShardError, EnumdistError) and issubclass(ShardError, RuntimeError)


def test_pipeline_errors_share_the_base():
    from enumdist.data.cache import CorruptCacheError
    from enumdist.decoding.checkpoint import CheckpointMismatchError
    from enumdist.pipeline.checkpoint_files import CheckpointError
    from enumdist.pipeline.checks import ConfigError
    from enumdist.pipeline.targets import UntrustedTargetError

    for error in (
        ConfigError,
        UntrustedTargetError,
        CheckpointError,
        CheckpointMismatchError,
        CorruptCacheError,
    ):
        assert issubclass(error, EnumdistError) and issubclass(error, ValueError), error


def unenumerated(data):
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=data)


@pytest.mark.parametrize("validation", [True, False])
def test_strict_enumeration_warning_follows_pyros_rule(validation):
    """TraceEnum_ELBO warns about nothing enumerated only while validation is on."""
    data = torch.randn(3)
    for loss in (pyro_loss, ours_loss):
        with warnings.catch_warnings(record=True) as caught, pyro.validation_enabled(validation):
            warnings.simplefilter("always")
            loss(unenumerated, no_guide, data)
        warned = any(
            "found no sample sites configured for enumeration" in m for m in messages(caught)
        )
        assert warned == validation, loss


def test_infer_discrete_warns_when_nothing_is_enumerated():
    data = torch.randn(3)
    for infer_discrete in (pyro.infer.infer_discrete, enumdist.infer_discrete):
        with warnings.catch_warnings(record=True) as caught, pyro.validation_enabled(False):
            warnings.simplefilter("always")
            infer_discrete(unenumerated, first_available_dim=-2)(data)
        assert any(
            m.startswith("infer_discrete found no sample sites configured for enumeration")
            for m in messages(caught)
        ), infer_discrete
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            infer_discrete(unenumerated, first_available_dim=-2, strict_enumeration_warning=False)(
                data
            )
        assert not any("found no sample sites" in m for m in messages(caught))


def test_infer_discrete_under_jit_emits_no_tracer_warning_pyro_does_not():
    def model(data):
        with pyro.plate("data", data.shape[0]):
            z = pyro.sample("z", dist.Categorical(torch.tensor([0.3, 0.7])), infer=ENUM)
            pyro.sample("x", dist.Normal(z.double(), 1.0), obs=data)
        return z

    def tracer_warnings(infer_discrete):
        def decode(data):
            return infer_discrete(model, first_available_dim=-2, temperature=0)(data)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = pyro.ops.jit.trace(decode)(torch.linspace(-1, 2, 5))
        return values, {
            (w.filename, w.lineno)
            for w in caught
            if issubclass(w.category, torch.jit.TracerWarning)
            and "site-packages/pyro/" not in w.filename
        }

    expected, pyro_warnings = tracer_warnings(pyro.infer.infer_discrete)
    values, ours = tracer_warnings(enumdist.infer_discrete)
    assert torch.equal(values, expected)
    assert ours <= pyro_warnings, ours - pyro_warnings  # only the model's own, as with Pyro


# -- validation on every call (issue 11.4) ------------------------------------------------------


def free_categorical(data):
    probs = pyro.param("probs", torch.tensor([0.2, 0.3, 0.5]))  # unconstrained on purpose
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(probs), infer=ENUM)
        pyro.sample("x", dist.Normal(z.double(), 1.0), obs=data)


def test_distribution_arguments_are_checked_on_every_call():
    data = torch.randn(6)
    for elbo in (TraceEnum_ELBO(max_plate_nesting=1), enumdist.EnumELBO(max_plate_nesting=1)):
        pyro.clear_param_store()
        elbo.loss(free_categorical, no_guide, data)
        with torch.no_grad():
            pyro.param("probs").copy_(torch.tensor([0.5, -0.1, 0.6]))  # finite loss, invalid
        with pytest.raises(ValueError, match="Expected parameter probs"):
            elbo.loss(free_categorical, no_guide, data)
    with pytest.raises(
        InvalidArgumentError,
        match=r"Expected parameter probs .* distribution "
        r"Categorical at site 'z' to satisfy the constraint Simplex\(\)",
    ):
        enumdist.EnumELBO(max_plate_nesting=1).loss(free_categorical, no_guide, data)
    with pyro.validation_enabled(False):  # Pyro's switch turns them off
        enumdist.EnumELBO(max_plate_nesting=1).loss(free_categorical, no_guide, data)


def test_validate_first_keeps_the_first_call_only_policy():
    data = torch.randn(6)
    elbo = enumdist.EnumELBO(max_plate_nesting=1, validate="first")
    elbo.loss(free_categorical, no_guide, data)
    with torch.no_grad():
        pyro.param("probs").copy_(torch.tensor([0.5, -0.1, 0.6]))
    assert np.isfinite(elbo.loss(free_categorical, no_guide, data))  # not checked again
    with pytest.raises(ValueError, match="validate='maybe'"):
        enumdist.EnumELBO(validate="maybe")


def bernoulli_hmm(sequences):
    trans = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    with pyro.plate("sequences", sequences.shape[0], dim=-1):
        x = 0
        for t in pyro.markov(range(sequences.shape[1])):
            x = pyro.sample(f"x_{t}", dist.Categorical(trans[x]), infer=ENUM)
            pyro.sample(f"y_{t}", dist.Bernoulli(0.2 + 0.6 * x.double()), obs=sequences[:, t])


@pytest.mark.parametrize("bad", [0.5, 2.0])
def test_data_changed_behind_the_version_counter_is_checked_again(bad):
    array = np.random.default_rng(0).integers(0, 2, (4, 6)).astype(np.float64)
    sequences = torch.from_numpy(array)  # shares memory with the numpy array
    for elbo in (TraceEnum_ELBO(max_plate_nesting=1), enumdist.EnumELBO(max_plate_nesting=1)):
        array[2, 3] = 1.0
        elbo.loss(bernoulli_hmm, no_guide, sequences)
        array[2, 3] = bad  # torch's version counter does not move
        with pytest.raises(ValueError, match="to be within the support"):
            elbo.loss(bernoulli_hmm, no_guide, sequences)
    with pytest.raises(InvalidArgumentError, match="observed site 'y_3'"):
        enumdist.EnumELBO(max_plate_nesting=1).loss(bernoulli_hmm, no_guide, sequences)
    first = enumdist.EnumELBO(max_plate_nesting=1, validate="first")
    array[2, 3] = 1.0
    first.loss(bernoulli_hmm, no_guide, sequences)
    array[2, 3] = bad
    first.loss(bernoulli_hmm, no_guide, sequences)  # the documented opt-out does not see it


# -- NaN observations under poutine.mask (issue 11, clearer errors) -----------------------------


def masked_mixture(data, mask):
    with pyro.plate("data", len(data)), poutine.mask(mask=mask):
        z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2), infer=ENUM)
        pyro.sample("x", dist.Normal(z.double(), 1.0), obs=data)


def test_nan_under_mask_is_refused_with_advice_to_fill_it():
    """Pyro refuses masked NaN data too (the support check runs before the mask), and the
    gradient through a masked NaN is NaN: refuse, and say how to keep the mask."""
    data = torch.tensor([0.3, float("nan"), -0.2])
    mask = ~torch.isnan(data)
    with pytest.raises(ValueError, match="to be within the support"):
        pyro_loss(masked_mixture, no_guide, data, mask)
    with pytest.raises(
        InvalidArgumentError,
        match=r"observed site 'x' contains NaN values, under "
        r"poutine.mask.*Fill the masked-out entries.*torch.where\(mask, data, 0.\)",
    ):
        ours_loss(masked_mixture, no_guide, data, mask)
    filled = torch.where(mask, data, 0.0)
    assert ours_loss(masked_mixture, no_guide, filled, mask) == pytest.approx(
        pyro_loss(masked_mixture, no_guide, filled, mask), rel=RTOL
    )


# -- the name for JitTraceEnum_ELBO users (issue 10, missing API) -------------------------------


def test_jit_enum_elbo_takes_jit_arguments_and_gives_pyros_numbers():
    data = torch.randn(6)
    elbo = enumdist.JitEnumELBO(
        max_plate_nesting=1, ignore_jit_warnings=True, jit_options={"check_trace": False}
    )
    assert isinstance(elbo, enumdist.EnumELBO)
    expected = pyro_loss(mixture, no_guide, data, 6)
    assert elbo.loss(mixture, no_guide, data, 6) == pytest.approx(expected, rel=RTOL)
    longer = torch.randn(9)  # no recompilation, no restriction on changing shapes
    assert elbo.loss(mixture, no_guide, longer, 9) == pytest.approx(
        pyro_loss(mixture, no_guide, longer, 9), rel=RTOL
    )


def test_pyros_own_handler_checks_stay_on_while_distributions_are_checked_stacked():
    """Only the distributions' checks move out of the trace; poutine's stay (a negative
    poutine.scale is refused on every call, as by Pyro)."""

    def model(data, scale):
        with pyro.plate("data", len(data)), poutine.scale(scale=scale):
            z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2), infer=ENUM)
            pyro.sample("x", dist.Normal(z.double(), 1.0), obs=data)

    data = torch.randn(3)
    elbo = enumdist.EnumELBO(max_plate_nesting=1)
    elbo.loss(model, no_guide, data, torch.tensor(2.0))
    for loss in (
        lambda: pyro_loss(model, no_guide, data, torch.tensor(-1.0)),
        lambda: elbo.loss(model, no_guide, data, torch.tensor(-1.0)),
    ):
        with pytest.raises(ValueError, match="Expected scale > 0"):
            loss()


def test_batch_dim_outside_every_plate_raises_as_pyro():
    def model(data):
        z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2), infer=ENUM)
        pyro.sample("x", dist.Normal(z.double() + torch.zeros(3), 1.0), obs=data)

    data = torch.randn(3)
    with pytest.raises(ValueError, match="invalid log_prob shape"):
        pyro_loss(model, no_guide, data)
    with pytest.raises(
        SiteShapeError,
        match=r"invalid log_prob shape: model site 'x' has a batch "
        r"dimension -1 of size 3 that belongs to no plate",
    ):
        ours_loss(model, no_guide, data)


def uncovered_global_model(data):
    """A continuous global ``z`` that no guide samples, above enumerated local ``c``."""
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        c = pyro.sample("c", dist.Bernoulli(0.3), infer=ENUM)
        pyro.sample("x", dist.Normal(z + c, 1.0), obs=data)


def warns_uncovered(entry_point, data) -> bool:
    """Whether ``entry_point(uncovered_global_model, no_guide, data)`` warns about ``z``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entry_point(uncovered_global_model, no_guide, data)
    return any("Found vars in model but not guide" in m for m in messages(caught))


def test_compute_marginals_warns_about_uncovered_sites_as_pyro():
    data = torch.randn(4)
    for elbo in (TraceEnum_ELBO(max_plate_nesting=1), enumdist.EnumELBO(max_plate_nesting=1)):
        assert warns_uncovered(elbo.compute_marginals, data), elbo


def test_enumerated_sites_under_different_scales_raise_as_pyro():
    def model(data):
        with poutine.scale(scale=2.0):
            a = pyro.sample("a", dist.Bernoulli(0.3), infer=ENUM)
        with poutine.scale(scale=3.0):
            b = pyro.sample("b", dist.Bernoulli(0.2 + 0.5 * a), infer=ENUM)
        pyro.sample("x", dist.Normal(a + b, 1.0), obs=data)

    data = torch.tensor(0.7)
    with pytest.raises(
        ValueError, match="Expected all enumerated sample sites to share a common poutine.scale"
    ):
        pyro_loss(model, no_guide, data, max_plate_nesting=0)
    with pytest.raises(
        EnumerationError,
        match="Expected all enumerated sample sites to share a "
        r"common poutine.scale.*'a' x2, 'b' x3",
    ):
        ours_loss(model, no_guide, data, max_plate_nesting=0)


def test_crossing_plates_raise_not_implemented_as_pyro():
    """A variable in each of two crossing plates, both read by one site: no exact order."""

    def model(data):
        rows, cols = pyro.plate("rows", 2, dim=-2), pyro.plate("cols", 3, dim=-1)
        with rows:
            a = pyro.sample("a", dist.Bernoulli(0.3), infer=ENUM)
        with cols:
            b = pyro.sample("b", dist.Bernoulli(0.6), infer=ENUM)
        with rows, cols:
            pyro.sample("x", dist.Normal(a + b, 1.0), obs=data)

    data = torch.randn(2, 3)
    with pytest.raises(NotImplementedError, match="Expected tree-structured plate nesting"):
        pyro_loss(model, no_guide, data, max_plate_nesting=2)
    with pytest.raises(EnumerationError, match="Expected tree-structured plate nesting") as error:
        ours_loss(model, no_guide, data, max_plate_nesting=2)
    assert isinstance(error.value, NotImplementedError)


def test_sample_posterior_does_not_warn_about_uncovered_sites_as_pyro():
    data = torch.randn(4)
    for elbo in (TraceEnum_ELBO(max_plate_nesting=1), enumdist.EnumELBO(max_plate_nesting=1)):
        assert not warns_uncovered(elbo.sample_posterior, data), elbo
