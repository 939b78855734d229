"""The benchmark's chorale HMM as a Pyro python loop and as the fused chain path.

The reference pair of BENCHMARKS.md (``experiments/benchmark.py``) and of the chain path's tests
(``tests/engine/test_chain.py``), kept here so that neither imports the other:

* :func:`loop_model` -- Pyro examples/hmm.py ``model_1`` as a python loop under ``pyro.markov``
  with a length mask: what ``TraceEnum_ELBO`` / ``EnumELBO`` / ``infer_discrete`` run.
* :func:`chain_model` -- the same joint, with time as a tensor dim: the chain marginal enters
  through ``enumdist.engine.chain.chain_factor`` (run it with ``Trace_ELBO``);
  :func:`chain_inputs` gives its kernels' inputs.

Both read the parameters ``probs_x [S, S]`` (simplex rows) and ``probs_y [S, K]`` from Pyro's
param store (:func:`params`), with the same initialisation, so their losses and gradients agree.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from enumdist.engine.chain import bernoulli_emission_log_probs, chain_factor

NUM_STATES = 16


def params(num_keys: int, num_states: int = NUM_STATES):
    """``(probs_x [S, S], probs_y [S, K])`` from Pyro's param store, made on the first call
    with a seeded initialisation (the same on every device and default dtype)."""
    probs_x = pyro.param(
        "probs_x",
        torch.full((num_states, num_states), 1.0 / num_states) + 0.1 * torch.eye(num_states),
        constraint=dist.constraints.simplex,
    )
    generator = torch.Generator().manual_seed(0)
    # drawn in float32 whatever the default dtype, so float64 runs start from the same values
    uniform = torch.rand(
        num_states, num_keys, generator=generator, dtype=torch.float32, device="cpu"
    )  # the same draw on every device
    probs_y = pyro.param(
        "probs_y",
        uniform.to(torch.get_default_dtype()).to(torch.get_default_device()) * 0.5 + 0.2,
        constraint=dist.constraints.unit_interval,
    )
    return probs_x, probs_y


def loop_model(sequences, lengths, num_states: int = NUM_STATES):
    """``x_t ~ Cat(probs_x[x_{t-1}])`` from ``x_{-1} = 0``; ``y_{t,k} ~ Bernoulli(probs_y[x_t, k])``."""
    num_sequences, max_length, num_keys = sequences.shape
    probs_x, probs_y = params(num_keys, num_states)
    keys = pyro.plate("keys", num_keys, dim=-1)
    with pyro.plate("sequences", num_sequences, dim=-2):
        x = 0
        for t in pyro.markov(range(max_length)):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                x = pyro.sample(
                    f"x_{t}", dist.Categorical(probs_x[x]), infer={"enumerate": "parallel"}
                )
                with keys:
                    pyro.sample(
                        f"y_{t}", dist.Bernoulli(probs_y[x.squeeze(-1)]), obs=sequences[:, t]
                    )


def chain_inputs(sequences, num_states: int = NUM_STATES):
    """``(init_logits [S], trans_logits [S, S], emission_log_probs [N, T, S])`` of the model."""
    probs_x, probs_y = params(sequences.shape[-1], num_states)
    log_trans = probs_x.log()
    return log_trans[0], log_trans, bernoulli_emission_log_probs(sequences, probs_y)


def chain_model(sequences, lengths, num_states: int = NUM_STATES, method: str = "sequential"):
    """The same joint as :func:`loop_model`, marginalised by the fused chain path."""
    init_logits, trans_logits, emissions = chain_inputs(sequences, num_states)
    with pyro.plate("sequences", sequences.shape[0], dim=-1):
        chain_factor("chain", init_logits, trans_logits, emissions, lengths, method)
