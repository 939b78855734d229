"""The Pyro-facing door of the chain kernels, and Bernoulli emissions in one matmul."""

from __future__ import annotations

import torch

from enumdist.engine.chain.forward_backward import chain_log_likelihood


def bernoulli_emission_log_probs(observations, probs):
    """``log p(y_{n,t} | x_t = s)`` for independent Bernoulli keys: ``[N, T, S]``.

    ``observations [N, T, K]`` in {0, 1}; ``probs [S, K]``. One matmul for all steps:
    ``y @ (log p - log(1 - p)).T + sum_k log(1 - p)``.
    """
    log_p, log_q = torch.log(probs), torch.log1p(-probs)
    return observations @ (log_p - log_q).T + log_q.sum(-1)


def chain_factor(
    name, init_logits, trans_logits, emission_log_probs, lengths=None, method="sequential"
):
    """``pyro.factor(name, chain_log_likelihood(...))``: use inside a ``pyro.plate`` over the
    ``N`` sequences (dim -1) to make a model's log-joint the chain marginal; returns it [N]."""
    import pyro

    log_z = chain_log_likelihood(init_logits, trans_logits, emission_log_probs, lengths, method)
    pyro.factor(name, log_z)
    return log_z
