"""A zoo of small Pyro models with enumerated discrete sites, used as exactness oracles.

Each :class:`Case` carries a model, a guide factory (guides with parameters are rebuilt for each
engine so both start from the same seed), the model's arguments, and ``max_plate_nesting``.
Parameters are created with deterministic initial values, so Pyro and enumdist see the same
numbers. Everything is float64 (tests set the default dtype).

This package is the tests' one zoo: :func:`empty_guide` here is the one every test uses, and
``zoo/models.py`` holds the cases of ``enumdist.models``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.ops.indexing import Vindex

ENUM = {"enumerate": "parallel"}


def _init(*shape, offset=0.0):
    g = torch.Generator().manual_seed(1234 + len(shape) + int(10 * offset))
    return torch.rand(*shape, generator=g, dtype=torch.float64) + 0.3 + offset


def _data(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _bits(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=torch.float64) < 0.4).double()


def empty_guide(*args, **kwargs):
    pass


@dataclass
class Case:
    name: str
    model: object
    args: tuple
    max_plate_nesting: int
    guide_factory: object = lambda model: empty_guide
    decodable: bool = True  # no guide-side latents: infer_discrete applies to the model alone
    kwargs: dict = field(default_factory=dict)


# --- mixtures -----------------------------------------------------------------------------


def gaussian_mixture(data):
    weights = pyro.param("weights", _init(3), constraint=constraints.simplex)
    locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.5], dtype=torch.float64))
    scale = pyro.param("scale", _init(1)[0] + 0.5, constraint=constraints.positive)
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(weights), infer=ENUM)
        pyro.sample("x", dist.Normal(locs[z], scale), obs=data)


def bayesian_mixture(data):
    weights = pyro.param("weights", _init(3), constraint=constraints.simplex)
    with pyro.plate("components", 3):
        locs = pyro.sample("locs", dist.Normal(0.0, 2.0))
        scales = pyro.sample("scales", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(weights), infer=ENUM)
        pyro.sample("x", dist.Normal(locs[z], scales[z]), obs=data)


def mixture_autodelta(model):
    return AutoDelta(poutine.block(model, hide=["z"]))


def mixture_autonormal(model):
    return AutoNormal(poutine.block(model, hide=["z"]))


# --- hidden Markov models written as python loops under pyro.markov -----------------------


def hmm_masked(ys, lengths):
    """History-1 HMM over variable-length sequences (mask past each length)."""
    num_steps, num_seqs = ys.shape
    init = pyro.param("init", _init(3), constraint=constraints.simplex)
    trans = pyro.param("trans", _init(3, 3), constraint=constraints.simplex)
    locs = pyro.param("emit_locs", torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64))
    with pyro.plate("sequences", num_seqs, dim=-1):
        x = None
        for t in pyro.markov(range(num_steps)):
            probs = init if x is None else trans[x]
            with poutine.mask(mask=t < lengths):
                x = pyro.sample(f"x_{t}", dist.Categorical(probs), infer=ENUM)
                pyro.sample(f"y_{t}", dist.Normal(locs[x], 1.0), obs=ys[t])


def hmm_second_order(ys):
    num_steps, num_seqs = ys.shape
    trans = pyro.param("trans2", _init(3, 3, 3), constraint=constraints.simplex)
    locs = pyro.param("emit_locs", torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64))
    with pyro.plate("sequences", num_seqs, dim=-1):
        x_prev, x_curr = 0, 0
        for t in pyro.markov(range(num_steps), history=2):
            x_prev, x_curr = (
                x_curr,
                pyro.sample(f"x_{t}", dist.Categorical(Vindex(trans)[x_prev, x_curr]), infer=ENUM),
            )
            pyro.sample(f"y_{t}", dist.Normal(locs[x_curr], 1.0), obs=ys[t])


def factorial_hmm(ys):
    num_steps, num_seqs = ys.shape
    trans_w = pyro.param("trans_w", _init(2, 2), constraint=constraints.simplex)
    trans_x = pyro.param("trans_x", _init(3, 3, offset=0.2), constraint=constraints.simplex)
    locs = pyro.param("locs_wx", _data(2, 3, seed=5))
    with pyro.plate("sequences", num_seqs, dim=-1):
        w, x = 0, 0
        for t in pyro.markov(range(num_steps)):
            w = pyro.sample(f"w_{t}", dist.Categorical(trans_w[w]), infer=ENUM)
            x = pyro.sample(f"x_{t}", dist.Categorical(trans_x[x]), infer=ENUM)
            pyro.sample(f"y_{t}", dist.Normal(Vindex(locs)[w, x], 1.0), obs=ys[t])


def bernoulli_hmm(rolls, lengths):
    """The chorale HMM's shape: sequences ⊃ keys, Bernoulli emissions, length masks."""
    num_seqs, num_steps, num_keys = rolls.shape
    trans = pyro.param("trans", _init(4, 4), constraint=constraints.simplex)
    probs_y = pyro.param(
        "probs_y", 0.8 * _init(4, num_keys) / 1.4, constraint=constraints.unit_interval
    )
    keys = pyro.plate("keys", num_keys, dim=-1)
    with pyro.plate("sequences", num_seqs, dim=-2):
        x = 0
        for t in pyro.markov(range(num_steps)):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                x = pyro.sample(f"x_{t}", dist.Categorical(trans[x]), infer=ENUM)
                with keys:
                    pyro.sample(f"y_{t}", dist.Bernoulli(probs_y[x.squeeze(-1)]), obs=rolls[:, t])


def logits_bernoulli_hmm(rolls, lengths):
    """:func:`bernoulli_hmm` parameterised by logits (unnormalised: Categorical normalises)."""
    num_seqs, num_steps, num_keys = rolls.shape
    trans = pyro.param("trans_logits", _init(4, 4).log() + 0.3)
    logits_y = pyro.param(
        "logits_y",
        torch.linspace(-2.0, 2.0, 4 * num_keys, dtype=torch.float64).reshape(4, num_keys),
    )
    keys = pyro.plate("keys", num_keys, dim=-1)
    with pyro.plate("sequences", num_seqs, dim=-2):
        x = 0
        for t in pyro.markov(range(num_steps)):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                x = pyro.sample(f"x_{t}", dist.Categorical(logits=trans[x]), infer=ENUM)
                with keys:
                    pyro.sample(
                        f"y_{t}", dist.Bernoulli(logits=logits_y[x.squeeze(-1)]), obs=rolls[:, t]
                    )


def hmm_global_regime(ys):
    """A regime shared by all sequences, outside the sequences plate."""
    num_steps, num_seqs = ys.shape
    regime_probs = pyro.param("regime_probs", _init(2), constraint=constraints.simplex)
    trans = pyro.param("trans_r", _init(2, 3, 3), constraint=constraints.simplex)
    locs = pyro.param("emit_locs", torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64))
    regime = pyro.sample("regime", dist.Categorical(regime_probs), infer=ENUM)
    with pyro.plate("sequences", num_seqs, dim=-1):
        x = 0
        for t in pyro.markov(range(num_steps)):
            x = pyro.sample(f"x_{t}", dist.Categorical(Vindex(trans)[regime, x]), infer=ENUM)
            pyro.sample(f"y_{t}", dist.Normal(locs[x], 1.0), obs=ys[t])


# --- plates ---------------------------------------------------------------------------------


def nested_topics(words):
    """documents ⊃ words: a document class and per-word topics, both enumerated."""
    num_docs, num_words = words.shape
    class_probs = pyro.param("class_probs", _init(2), constraint=constraints.simplex)
    topic_probs = pyro.param("topic_probs", _init(2, 3), constraint=constraints.simplex)
    word_probs = pyro.param("word_probs", _init(3, 5), constraint=constraints.simplex)
    with pyro.plate("documents", num_docs, dim=-2):
        c = pyro.sample("c", dist.Categorical(class_probs), infer=ENUM)
        with pyro.plate("words", num_words, dim=-1):
            z = pyro.sample("z", dist.Categorical(Vindex(topic_probs)[c]), infer=ENUM)
            pyro.sample("w", dist.Categorical(Vindex(word_probs)[z]), obs=words)


def global_outside_plate(data):
    """A global enumerated variable interacting with local ones (Pyro issue #1460's shape)."""
    g_probs = pyro.param("g_probs", _init(2), constraint=constraints.simplex)
    z_probs = pyro.param("z_probs", _init(2, 3), constraint=constraints.simplex)
    locs = pyro.param("locs_gz", _data(2, 3, seed=3))
    g = pyro.sample("g", dist.Categorical(g_probs), infer=ENUM)
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(Vindex(z_probs)[g]), infer=ENUM)
        pyro.sample("x", dist.Normal(Vindex(locs)[g, z], 1.0), obs=data)


def scaled_and_masked(data):
    weights = pyro.param("weights", _init(3), constraint=constraints.simplex)
    locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.5], dtype=torch.float64))
    keep = torch.arange(len(data)) % 3 != 0
    with poutine.scale(scale=2.5), pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(weights), infer=ENUM)
        with poutine.mask(mask=keep):
            pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)


def subsampled_plate(data, index):
    weights = pyro.param("weights", _init(3), constraint=constraints.simplex)
    locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.5], dtype=torch.float64))
    with pyro.plate("data", 40, subsample=index):
        z = pyro.sample("z", dist.Categorical(weights), infer=ENUM)
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data[index])


# --- guides with discrete choices of their own -----------------------------------------------


def guide_enumerated_model(data):
    weights = pyro.param("weights", _init(2), constraint=constraints.simplex)
    locs = pyro.param("locs2", torch.tensor([-1.0, 1.0], dtype=torch.float64))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)


@config_enumerate
def guide_enumerated_guide(data):
    q = pyro.param("q", _init(len(data), 2), constraint=constraints.simplex)
    with pyro.plate("data", len(data)):
        pyro.sample("z", dist.Categorical(q))


def score_function_model(data):
    """A model whose discrete global is sampled (not enumerated) by the guide: DiCE weights."""
    p = pyro.param(
        "p_coin", torch.tensor(0.3, dtype=torch.float64), constraint=constraints.unit_interval
    )
    locs = pyro.param("locs2", torch.tensor([-1.0, 1.0], dtype=torch.float64))
    coin = pyro.sample("coin", dist.Bernoulli(p))
    weights = pyro.param("weights", _init(2), constraint=constraints.simplex)
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(weights), infer=ENUM)
        pyro.sample("x", dist.Normal(locs[z] + coin, 1.0), obs=data)


def score_function_guide(data):
    q = pyro.param(
        "q_coin", torch.tensor(0.6, dtype=torch.float64), constraint=constraints.unit_interval
    )
    pyro.sample("coin", dist.Bernoulli(q))


def _cases():
    ys = _data(6, 4, seed=1)
    lengths = torch.tensor([6, 4, 2, 5])
    rolls = _bits(5, 7, 6, seed=2)
    roll_lengths = torch.tensor([7, 3, 5, 1, 6])
    words = torch.randint(0, 5, (4, 6), generator=torch.Generator().manual_seed(4))
    mix = _data(25, seed=6) * 1.5
    return [
        Case("gaussian_mixture", gaussian_mixture, (mix,), 1),
        Case("bayesian_mixture_autodelta", bayesian_mixture, (mix,), 1, mixture_autodelta, False),
        Case("bayesian_mixture_autonormal", bayesian_mixture, (mix,), 1, mixture_autonormal, False),
        Case("hmm_masked", hmm_masked, (ys, lengths), 1),
        Case("hmm_second_order", hmm_second_order, (ys,), 1),
        Case("factorial_hmm", factorial_hmm, (ys,), 1),
        Case("bernoulli_hmm_nested_plates", bernoulli_hmm, (rolls, roll_lengths), 2),
        Case("logits_bernoulli_hmm", logits_bernoulli_hmm, (rolls, roll_lengths), 2),
        Case("hmm_global_regime", hmm_global_regime, (ys,), 1),
        Case("nested_topics", nested_topics, (words,), 2),
        Case("global_outside_plate", global_outside_plate, (mix[:10],), 1),
        Case("scaled_and_masked", scaled_and_masked, (mix,), 1),
        Case(
            "subsampled_plate",
            subsampled_plate,
            (_data(40, seed=7), torch.tensor([3, 17, 5, 22, 39, 0, 11])),
            1,
        ),
        Case(
            "guide_enumeration",
            guide_enumerated_model,
            (mix[:8],),
            1,
            lambda model: guide_enumerated_guide,
            False,
        ),
        Case(
            "score_function_guide",
            score_function_model,
            (mix[:8],),
            1,
            lambda model: score_function_guide,
            False,
        ),
    ]


CASES = _cases()
CASE_IDS = [c.name for c in CASES]
