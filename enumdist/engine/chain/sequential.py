"""Forward and backward messages one step at a time (``method="sequential"``).

``alpha_t = (alpha_{t-1} @ A_t) * g_t`` and ``beta_{t-1} = A_t @ (g_t * beta_t)``, both in scaled
probability space as ``(h, c)`` (see :mod:`.scaling`); a step ``t >= length`` is an identity.
"""

from __future__ import annotations

import torch

from enumdist.engine.chain.scaling import _scaled


def _sequential_forward(init_logits, probs, shift, scaled_emissions, emission_max, valid):
    """Forward messages ``alpha`` as ``(h [N, T, S], c [N, T])``, ``alpha = log h + c``.

    Scaled probability space: each message is normalised to sum one and its log-norm kept in
    ``c``, so a step is one matmul and three small elementwise ops. Rows must be sorted by
    length, longest first: the sequences still running at step ``t`` are then a prefix, and
    finished ones simply keep their last message.
    """
    n, t_total = valid.shape
    counts = valid.sum(0).tolist()
    h_init, c_init = _scaled(init_logits)
    # time-major copies: every per-step slice below is contiguous (much cheaper on CPU)
    emissions_by_step = scaled_emissions.transpose(0, 1).contiguous()
    out = emissions_by_step.new_empty(emissions_by_step.shape)
    norms = emission_max.new_ones(emission_max.shape[::-1])  # [T, N], rows contiguous
    ones = out.new_ones(out.shape[-1], 1)  # row sums as a matmul: faster than sum(-1) here
    h = h_init * emissions_by_step[0]
    z = h @ ones
    h = h / z
    norms[0] = z.squeeze(-1)
    out[0] = h
    step_probs = [probs[0]] * t_total if probs.shape[0] == 1 else list(probs)
    for t in range(1, t_total):
        k = counts[t]
        if k == n:  # every sequence still running: write in place, no slicing or copies
            h_next, z = out[t], norms[t].unsqueeze(-1)
            torch.mm(h, step_probs[t], out=h_next).mul_(emissions_by_step[t])
            torch.mm(h_next, ones, out=z)
            h = h_next.div_(z)
            continue
        h = h.clone() if h.data_ptr() == out[t - 1].data_ptr() else h
        if k:
            u = (h[:k] @ step_probs[t]).mul_(emissions_by_step[t, :k])
            z = u @ ones
            h[:k] = u.div_(z)
            norms[t, :k] = z.squeeze(-1)
        out[t] = h
    out, norms = out.transpose(0, 1), norms.T
    steps = torch.where(valid, emission_max + shift.reshape(-1), torch.zeros((), dtype=h.dtype))
    steps[:, 0] = emission_max[:, 0] + c_init
    return out, torch.cumsum(steps + torch.log(norms), dim=1)


def _sequential_backward(probs, shift, scaled_emissions, emission_max, valid):
    """Backward messages ``beta`` (``log p(y_{>t} | x_t)``) as ``(h, c)``; rows sorted as in
    :func:`_sequential_forward`. ``beta_{t-1} = A_t (x) (e_t + beta_t)``, run from the end."""
    n, t_total = valid.shape
    counts = valid.sum(0).tolist()
    emissions_by_step = scaled_emissions.transpose(0, 1).contiguous()
    out = emissions_by_step.new_empty(emissions_by_step.shape)
    norms = emission_max.new_ones(emission_max.shape[::-1])  # [T, N], rows contiguous
    ones = out.new_ones(out.shape[-1], 1)
    h = out.new_ones(n, out.shape[-1])
    out[-1] = h
    step_probs_t = (
        [probs[0].T.contiguous()] * t_total
        if probs.shape[0] == 1
        else list(probs.transpose(-1, -2).contiguous())
    )
    for t in range(t_total - 1, 0, -1):
        k = counts[t]
        if k == n:  # every sequence still running: write in place, no slicing or copies
            h_prev, z = out[t - 1], norms[t - 1].unsqueeze(-1)
            torch.mm(h * emissions_by_step[t], step_probs_t[t], out=h_prev)
            torch.mm(h_prev, ones, out=z)
            h = h_prev.div_(z)
            continue
        h = h.clone() if h.data_ptr() == out[t].data_ptr() else h
        if k:
            u = (h[:k] * emissions_by_step[t, :k]) @ step_probs_t[t]
            z = u @ ones
            h[:k] = u.div_(z)
            norms[t - 1, :k] = z.squeeze(-1)
        out[t - 1] = h
    out, norms = out.transpose(0, 1), norms.T
    steps = torch.where(valid, emission_max + shift.reshape(-1), torch.zeros((), dtype=h.dtype))
    increments = torch.log(norms[:, :-1]) + steps[:, 1:]  # beta_{t-1} - beta_t, t = 1..T-1
    c = torch.zeros_like(emission_max)
    c[:, :-1] = increments.flip(1).cumsum(1).flip(1)
    return out, c
