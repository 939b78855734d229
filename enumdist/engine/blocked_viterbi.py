"""Viterbi for long chains in ``O(sqrt T)`` python steps: the max-plus twin of the blocked scan.

:func:`enumdist.engine.chain.chain_map` takes one python step per time step: at ``T = 10^5``
that loop, not the arithmetic, is the cost. Here steps ``1..T-1`` are cut into ``B`` blocks of
``K`` (as :func:`enumdist.engine.chain._blocked_steps` does):

1. ``K`` batched max-plus steps build every block's matrix ``M_b[i, j]`` (best log-weight of
   a path through the block from state ``i`` before it to state ``j`` at its end);
2. ``B`` vector steps run Viterbi across blocks and backtrack the boundary states;
3. ``K`` batched steps decode every block at once between its two (now known) end states.

Same conventions as ``chain_map`` (``init [S]``, ``trans [S, S] | [T, S, S]``,
``emissions [N, T, S]``, ``lengths``; steps past a length are 0). Ties may break differently
from ``chain_map``; on exact ties both paths are optimal. Memory ``O(N·T·S)`` for back-pointers
plus ``O(B·N·S²)`` block matrices, with the ``B·N·S³`` step temporaries taken in chunks.
"""

from __future__ import annotations

import math

import torch

from enumdist.engine.chain import _prepare

__all__ = ["blocked_chain_map", "max_block_matrices", "max_product"]

#: elements of one max-plus temporary ``[chunk, N, S, S, S]`` (bounds peak memory)
_CHUNK_ELEMENTS = 2**22


def max_product(a, b):
    """Max-plus matrix product ``max_k a[..., i, k] + b[..., k, j]``."""
    return (a.unsqueeze(-1) + b.unsqueeze(-3)).amax(-2)


def _layout(trans, emissions, valid, block):
    """Steps ``1..T-1`` as ``[K, B, ...]``: emissions ``[K, B, N, S]``, keep ``[K, B, N]``,
    transitions ``[1, 1, S, S]`` or ``[K, B, S, S]``."""
    _, t_total, s = emissions.shape
    m = t_total - 1
    k = min(block or max(s, math.isqrt(m)), m)
    b = -(-m // k)

    def by_block(x, fill):
        x = torch.cat([x, x.new_full((b * k - m, *x.shape[1:]), fill)])
        return x.reshape(b, k, *x.shape[1:]).transpose(0, 1).contiguous()

    step_trans = trans[None, None] if trans.dim() == 2 else by_block(trans[1:], 0.0)
    return (
        by_block(emissions[:, 1:].transpose(0, 1), 0.0),
        by_block(valid[:, 1:].T, False),
        step_trans,
    )


def _step_trans(trans, j):
    return trans[0 if trans.shape[0] == 1 else j]  # [1|B, S, S]


def max_block_matrices(trans, emissions, valid, block=None):
    """Every block's max-plus matrix ``[B, N, S, S]`` (an identity where a step is not kept)."""
    e, keep, a = _layout(trans, emissions, valid, block)
    k, b, n, s = e.shape
    eye = torch.full((s, s), -math.inf, dtype=e.dtype, device=e.device).fill_diagonal_(0.0)
    x = eye.expand(b, n, s, s).clone()
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n * s**3))
    for j in range(k):
        a_j = _step_trans(a, j)
        for lo in range(0, b, chunk):
            hi = min(b, lo + chunk)
            a_c = a_j if a_j.shape[0] == 1 else a_j[lo:hi]
            new = max_product(x[lo:hi], a_c.unsqueeze(1)) + e[j, lo:hi].unsqueeze(-2)
            x[lo:hi] = torch.where(keep[j, lo:hi, :, None, None], new, x[lo:hi])
    return x


@torch.no_grad()
def blocked_chain_map(init_logits, trans_logits, emission_log_probs, lengths=None, block=None):
    """Viterbi states ``[N, T]`` (as :func:`enumdist.engine.chain.chain_map`)."""
    valid = _prepare(init_logits, trans_logits, emission_log_probs, lengths)
    n, t_total, s = emission_log_probs.shape
    first = init_logits + emission_log_probs[:, 0]  # [N, S] over x_0
    if t_total == 1:
        return first.argmax(-1, keepdim=True) * valid
    matrices = max_block_matrices(trans_logits, emission_log_probs, valid, block)
    # (2) across blocks: the best state at every block's end, then the state before each block
    delta, pointers = first, []
    for m in matrices:
        delta, arg = (delta.unsqueeze(-1) + m).max(-2)
        pointers.append(arg)
    ends = [delta.argmax(-1)]
    for arg in reversed(pointers):
        ends.append(arg.gather(-1, ends[-1].unsqueeze(-1)).squeeze(-1))
    ends = torch.stack(ends[::-1])  # [B + 1, N]: ends[0] is x_0, ends[b + 1] block b's end
    # (3) inside every block at once, from its known start state to its known end state
    e, keep, a = _layout(trans_logits, emission_log_probs, valid, block)
    k, b = keep.shape[:2]
    start = ends[:-1]  # [B, N]
    delta = torch.full((b, n, s), -math.inf, dtype=e.dtype, device=e.device)
    delta.scatter_(-1, start.unsqueeze(-1), 0.0)
    identity = torch.arange(s, device=e.device).expand(b, n, s)
    back = identity.new_empty(k, b, n, s)
    for j in range(k):
        a_j = _step_trans(a, j)
        scores = delta.unsqueeze(-1) + a_j.unsqueeze(1)  # [B, N, prev, next]
        best, arg = scores.max(-2)
        kept = keep[j].unsqueeze(-1)
        delta = torch.where(kept, best + e[j], delta)
        back[j] = torch.where(kept, arg, identity)
    states = identity.new_empty(k, b, n)
    x = ends[1:]
    for j in range(k - 1, -1, -1):
        states[j] = x
        x = back[j].gather(-1, x.unsqueeze(-1)).squeeze(-1)
    path = torch.cat([ends[0].unsqueeze(-1), states.permute(2, 1, 0).reshape(n, b * k)], 1)
    return path[:, :t_total] * valid
