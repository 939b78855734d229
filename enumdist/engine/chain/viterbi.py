"""Viterbi: the most probable state path of a chain, one kernel for every case.

Transitions are shared ``[T|1, S, S]`` or per sequence ``[N, T, S, S]``; an optional ``mask
[N, T]`` frees the transition into a step where it is False (a masked step's every state
takes the best predecessor's score: ``infer_discrete`` masks the enumerated sites of padded
steps). Ties go to the first maximum.
"""

from __future__ import annotations

import torch

from enumdist.engine.chain.forward_backward import _prepare


@torch.no_grad()
def viterbi(emissions, trans, mask=None, init=None):
    """Best path log-weight ``delta [N, S]`` at the end and back-pointers ``[N, T, S]``.

    ``emissions [N, T, S]``; ``trans [T|1, S, S]`` or ``[N, T, S, S]`` (``trans[.., 0]`` unused);
    ``mask [N, T]`` bool or None (nothing masked); ``init [S]`` added to step 0, or None.
    Time-major inside, each transition matrix transposed so that the maximum over the
    previous state runs along contiguous memory.
    """
    n, t_total, s = emissions.shape
    per_sequence = trans.dim() == 4
    by_next = trans.transpose(-1, -2).contiguous()  # [.., next, prev]
    emissions_by_step = emissions.transpose(0, 1).contiguous()
    all_kept = [True] * t_total if mask is None else mask.all(0).tolist()
    identity = torch.arange(s, device=emissions.device).expand(n, s)
    pointers = identity.new_empty(t_total, n, s)
    pointers[0] = identity
    delta = emissions_by_step[0] if init is None else init + emissions_by_step[0]
    for t in range(1, t_total):
        step = by_next[:, t] if per_sequence else by_next[t if by_next.shape[0] > 1 else 0]
        best, arg = (delta.unsqueeze(-2) + step).max(-1)
        if not all_kept[t]:
            free, free_arg = delta.max(dim=-1, keepdim=True)
            keep = mask[:, t, None]
            best = torch.where(keep, best, free)
            arg = torch.where(keep, arg, free_arg)
        pointers[t] = arg
        delta = best.add_(emissions_by_step[t])
    return delta, pointers.transpose(0, 1)


def follow(pointers, last):
    """States ``[N, T]`` from back-pointers ``[N, T, S]``, given the final states ``[N]``."""
    n, t_total, _ = pointers.shape
    states = pointers.new_empty(n, t_total)
    x = last
    for t in range(t_total - 1, -1, -1):
        states[:, t] = x
        x = pointers[:, t].gather(-1, x.unsqueeze(-1)).squeeze(-1)
    return states


@torch.no_grad()
def chain_map(init_logits, trans_logits, emission_log_probs, lengths=None):
    """Viterbi: the most probable state path, LongTensor ``[N, T]``.

    Steps ``t >= lengths[n]`` are 0: they carry no evidence, every state ties, and like Pyro's
    ``infer_discrete`` (which masks the enumerated sites there) the first state wins. Past a
    length both the transition (masked) and the emission (zeroed) drop out, so the best path
    over the kept steps is the best path of the shorter chain.
    """
    valid = _prepare(init_logits, trans_logits, emission_log_probs, lengths)
    trans = trans_logits if trans_logits.dim() == 3 else trans_logits.unsqueeze(0)
    every = bool(valid.all())
    emissions = (
        emission_log_probs
        if every
        else torch.where(valid.unsqueeze(-1), emission_log_probs, emission_log_probs.new_zeros(()))
    )
    delta, pointers = viterbi(emissions, trans, None if every else valid, init_logits)
    return follow(pointers, delta.argmax(-1)) * valid
