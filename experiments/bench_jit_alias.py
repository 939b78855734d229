"""One ELBO+gradient step: ``enumdist.JitEnumELBO`` (= ``EnumELBO``, no JIT) vs Pyro's
``JitTraceEnum_ELBO`` and ``TraceEnum_ELBO``, on a small Bernoulli HMM (one process, one thread).

    python experiments/bench_jit_alias.py [--sequences 20] [--steps 30]

Prints one line per contender: first call (JIT compilation for Pyro's) and best later step.
"""

from __future__ import annotations

import argparse
import gc
import time
import warnings

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import JitTraceEnum_ELBO, TraceEnum_ELBO

import enumdist


def hmm(sequences):
    num_states, num_keys = 4, sequences.shape[-1]
    probs_x = pyro.param(
        "probs_x",
        torch.full((num_states, num_states), 1 / num_states) + 0.1 * torch.eye(num_states),
        constraint=dist.constraints.simplex,
    )
    probs_y = pyro.param(
        "probs_y",
        torch.linspace(0.2, 0.8, num_states * num_keys).reshape(num_states, num_keys),
        constraint=dist.constraints.unit_interval,
    )
    with pyro.plate("keys", num_keys, dim=-1), pyro.plate("sequences", sequences.shape[0], dim=-2):
        x = 0
        for t in pyro.markov(range(sequences.shape[1])):
            x = pyro.sample(f"x_{t}", dist.Categorical(probs_x[x]), infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Bernoulli(probs_y[x.squeeze(-1)]), obs=sequences[:, t])


def guide(sequences):
    pass


def seconds(fn):
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        gc.enable()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, 2, (options.sequences, options.steps, 8), generator=generator).float()
    contenders = {
        "enumdist.JitEnumELBO": enumdist.JitEnumELBO(max_plate_nesting=2),
        "pyro JitTraceEnum_ELBO": JitTraceEnum_ELBO(max_plate_nesting=2),
        "pyro TraceEnum_ELBO": TraceEnum_ELBO(max_plate_nesting=2),
    }
    losses = {}
    pyro.clear_param_store()
    for name, elbo in contenders.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            first = seconds(
                lambda elbo=elbo, name=name: losses.setdefault(
                    name, elbo.loss_and_grads(hmm, guide, data)
                )
            )
            best = min(
                seconds(lambda elbo=elbo: elbo.loss_and_grads(hmm, guide, data))
                for _ in range(options.repeats)
            )
        print(
            f"{name}: first call {first:.3f} s, later step {best:.4f} s, loss {losses[name]:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
