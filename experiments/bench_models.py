"""The chorale HMM of the benchmark, written three ways.

:func:`~enumdist.reference_hmm.loop_model` and :func:`~enumdist.reference_hmm.chain_model` (and
their parameters) live in ``enumdist/reference_hmm.py``, shared with the tests; here is the third
way, :func:`naive_forward_loss`, a hand-written log-sum-exp forward loop under plain autograd,
which only the benchmark runs.
"""

from __future__ import annotations

import torch

from enumdist.reference_hmm import (
    NUM_STATES,
    chain_inputs,
    chain_model,
    loop_model,
    params,
)

__all__ = [
    "NUM_STATES",
    "chain_inputs",
    "chain_model",
    "empty_guide",
    "loop_model",
    "naive_forward_loss",
    "params",
]


def empty_guide(*args, **kwargs):
    pass


def naive_forward_loss(sequences, lengths, num_states: int = NUM_STATES):
    """``-sum_n log p(y_n)`` by a log-sum-exp loop, differentiated by autograd step by step."""
    init_logits, trans_logits, emissions = chain_inputs(sequences, num_states)
    alpha = init_logits + emissions[:, 0]
    for t in range(1, sequences.shape[1]):
        new = torch.logsumexp(alpha.unsqueeze(-1) + trans_logits, dim=-2) + emissions[:, t]
        alpha = torch.where((t < lengths).unsqueeze(-1), new, alpha)
    return -torch.logsumexp(alpha, dim=-1).sum()
