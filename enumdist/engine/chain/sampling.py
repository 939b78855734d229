"""Forward filtering, backward sampling: one exact joint posterior draw of a chain's states,
and the categorical draw every backward sampling pass of the engine uses."""

from __future__ import annotations

import torch

from enumdist.engine.chain.forward_backward import _batched_forward, _prepare, _sorted
from enumdist.engine.chain.scaling import _scaled, _transition_probs
from enumdist.engine.chain.sequential import _sequential_forward


def draw(logits, generator=None):
    """One index per row of ``logits [..., S]`` from ``softmax(logits)``: LongTensor ``[...]``."""
    probs = torch.softmax(logits, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).squeeze(-1).reshape(probs.shape[:-1])


@torch.no_grad()
def backward_sample(alpha, trans, valid=None, generator=None):
    """States ``[N, T]`` drawn backwards from forward messages ``alpha [N, T, S]`` (log, any
    per-row constant) and transitions ``[T|1, S, S]`` or ``[N, T, S, S]``; where ``valid [N, T]``
    is False the state is carried back unchanged (a padded step)."""
    n, t_total, s = alpha.shape
    states = torch.empty(n, t_total, dtype=torch.long, device=alpha.device)
    x = draw(alpha[:, -1], generator)
    for t in range(t_total - 1, -1, -1):
        states[:, t] = x
        if t == 0:
            break
        if trans.dim() == 4:  # p(x_{t-1} | x_t, y_{<t}) ~ alpha_{t-1} + A_t[:, x_t]
            column = trans[:, t].gather(-1, x.view(n, 1, 1).expand(n, s, 1)).squeeze(-1)
        else:
            column = trans[0 if trans.shape[0] == 1 else t][:, x].T
        back = draw(alpha[:, t - 1] + column, generator)
        x = back if valid is None else torch.where(valid[:, t], back, x)
    return states


@torch.no_grad()
def chain_sample(init_logits, trans_logits, emission_log_probs, lengths=None, generator=None):
    """One joint posterior draw of the state path (forward filtering, backward sampling),
    LongTensor ``[N, T]``; steps ``t >= lengths[n]`` are 0 (as in ``chain_map``)."""
    valid = _prepare(init_logits, trans_logits, emission_log_probs, lengths)
    trans = trans_logits if trans_logits.dim() == 3 else trans_logits.unsqueeze(0)
    order = _sorted(valid.sum(1))
    order = torch.arange(valid.shape[0]) if order is None else order
    probs, shift = _transition_probs(trans)
    h, _ = _sequential_forward(
        init_logits, probs, shift, *_scaled(emission_log_probs[order]), valid[order]
    )
    alpha = torch.log(h)[torch.argsort(order)]  # per-row constants do not matter below
    return backward_sample(alpha, trans, valid, generator) * valid


@torch.no_grad()
def batched_chain_sample(emissions, trans, generator=None):
    """One posterior path ``[N, T]`` per sequence, with per-sequence ``trans [N, T, S, S]``."""
    alphas = torch.stack(_batched_forward(emissions, trans, torch.logsumexp), 1)
    return backward_sample(alphas, trans, None, generator)
