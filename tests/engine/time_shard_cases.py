"""Chains split by time for the 2-rank tests: parameters, data and each rank's block."""

from __future__ import annotations

from typing import NamedTuple

import pyro.distributions as pd
import torch


class ChainCase(NamedTuple):
    name: str
    num_sequences: int
    steps: int
    states: int
    split: tuple  # steps held by each rank
    time_varying: bool
    batched_init: bool


CASES = [
    ChainCase("homogeneous", 3, 9, 3, (5, 4), False, False),
    ChainCase("time_varying", 2, 8, 4, (3, 5), True, True),
    ChainCase("one_step_block", 2, 3, 3, (2, 1), False, False),
    ChainCase("long_scan", 2, 600, 3, (300, 300), True, False),
    # blocks of >= 1024 steps and few states: the blocked scan's transfer matrices
    ChainCase("scan_blocks", 2, 2200, 3, (1100, 1100), False, False),
]


def parameters(case, seed=0):
    """Leaf tensors ``init``, ``trans``, ``loc`` (Normal emissions), float64, and data ``y``."""
    g = torch.Generator().manual_seed(seed)
    s, t, n = case.states, case.steps, case.num_sequences
    init = torch.randn((n, s) if case.batched_init else (s,), generator=g, dtype=torch.float64)
    trans = torch.randn(
        (t, s, s) if case.time_varying else (s, s), generator=g, dtype=torch.float64
    ) + 2 * torch.eye(s, dtype=torch.float64)
    loc = torch.randn((t, s) if case.time_varying else (s,), generator=g, dtype=torch.float64)
    y = torch.randn(n, t, generator=g, dtype=torch.float64) * 1.5
    return {
        "init": init.requires_grad_(),
        "trans": trans.requires_grad_(),
        "loc": loc.requires_grad_(),
    }, y


def block_range(case, rank):
    start = sum(case.split[:rank])
    return start, start + case.split[rank]


def normalised(params):
    """The logits Pyro's DiscreteHMM uses (it normalises them itself)."""
    return params["init"].log_softmax(-1), params["trans"].log_softmax(-1)


def full_emissions(params, y):
    return pd.Normal(params["loc"], 1.0).log_prob(y.unsqueeze(-1))  # [N, T, S]


def block_inputs(case, params, y, rank):
    """This rank's (initial_logits, transition_logits, emission_log_probs)."""
    start, stop = block_range(case, rank)
    init, trans = normalised(params)
    if case.time_varying:
        trans = trans[start:stop]
    return init, trans, full_emissions(params, y)[:, start:stop]
