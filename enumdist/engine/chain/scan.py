"""Forward and backward messages by a blocked scan (``method="scan"``): ``O(K + T/K)`` python
steps instead of ``T``, for long chains of few sequences and states."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from enumdist.engine.chain.scaling import _finite_max, _normalised, _scaled


class _Steps(NamedTuple):
    """Steps ``t = 1..T-1`` in ``B`` blocks of ``K``, laid out ``[K, B, ...]``: slice ``j`` holds
    step ``t = 1 + b·K + j`` of every block ``b``. Padding past ``T - 1`` is never kept."""

    emissions: torch.Tensor  # [K, B, N, S] scaled
    increments: torch.Tensor  # [K, B, N] log-scale taken out of a kept step, 0 if not kept
    keep: torch.Tensor  # [K, B, N] bool: t < length
    mixed: list  # [K] bool: slice j has a step that is not kept
    probs: torch.Tensor  # [1, 1, S, S] (homogeneous) or [K, B, S, S]

    def times(self, x, j, transpose=False):
        """``x [B, N, ..., S] @ A_t`` (or ``A_t^T``) for step ``j`` of every block."""
        a = self.probs[j if self.probs.shape[0] > 1 else 0]
        a = a.transpose(-1, -2) if transpose else a
        if a.shape[0] == 1:
            return x @ a[0]
        return (x.reshape(a.shape[0], -1, a.shape[-1]) @ a).reshape(x.shape)

    def hold(self, new, old, norms, j):
        """Messages ``[B, N, S]`` after step ``j``: ``old`` (norm 1) where it is not kept."""
        if not self.mixed[j]:
            return new, norms
        keep = self.keep[j]
        return torch.where(keep.unsqueeze(-1), new, old), torch.where(keep, norms, 1.0)


def _blocked_steps(probs, shift, scaled_emissions, emission_max, valid, block=None):
    """:class:`_Steps` for ``T - 1 >= 1`` steps; ``K`` defaults to ``max(S, sqrt(T - 1))``."""
    t_total, s = scaled_emissions.shape[1:]
    m = t_total - 1
    k = min(block or max(s, math.isqrt(m)), m)
    b = -(-m // k)

    def by_block(x, fill):  # [M, ...] -> [K, B, ...]
        x = torch.cat([x, x.new_full((b * k - m, *x.shape[1:]), fill)])
        return x.reshape(b, k, *x.shape[1:]).transpose(0, 1).contiguous()

    keep = by_block(valid[:, 1:].T, False)
    step_shift = shift.reshape(-1)[1:] if shift.shape[0] > 1 else shift.reshape(())
    increments = by_block((emission_max[:, 1:] + step_shift).T, 0.0)
    return _Steps(
        emissions=by_block(scaled_emissions[:, 1:].transpose(0, 1), 1.0),
        increments=torch.where(keep, increments, 0.0),  # not `* keep`: may be -inf
        keep=keep,
        mixed=(~keep.flatten(1).all(1)).tolist(),
        probs=probs[None] if probs.shape[0] == 1 else by_block(probs[1:], 0.0),
    )


def _block_matrices(steps):
    """``F_b = prod_t A_t diag(g_t)`` over block ``b``'s kept steps, for every block and
    sequence at once (``K`` batched steps): rows normalised to sum one ``[B, N, S, S]`` and
    their log-scales ``[B, N, S]``. A row is a forward pass from one start state, so this is
    as safe as the sequential algorithm."""
    k, b, n, s = steps.emissions.shape
    # Past a sequence's end every step is an identity. Rather than masking each step, run on
    # and fix up: the block holding the end keeps the product saved just before its first
    # step not kept, blocks wholly past the end become identities.
    kept = steps.keep.sum(0)  # [B, N]
    ending_b, ending_n = ((kept > 0) & (kept < k)).nonzero(as_tuple=True)
    ending_j = kept[ending_b, ending_n]
    ends_at = {
        j: (ending_b[ending_j == j], ending_n[ending_j == j]) for j in ending_j.unique().tolist()
    }
    eye = torch.eye(s, dtype=steps.emissions.dtype, device=steps.emissions.device)
    x = eye.expand(b, n, s, s)
    norms = steps.emissions.new_empty(k, b, n, s)
    saved = []
    for j in range(k):
        if j in ends_at:
            saved.append((ends_at[j], x[ends_at[j]]))
        x, norms[j] = _normalised(steps.times(x, j).mul_(steps.emissions[j].unsqueeze(-2)))
    for index, value in saved:
        x[index] = value
    x = torch.where((kept > 0)[..., None, None], x, eye)
    log_norms = torch.where(steps.keep.unsqueeze(-1), torch.log(norms), 0.0)
    return x, log_norms.sum(0) + steps.increments.sum(0).unsqueeze(-1)


def _scan_forward(init_logits, probs, shift, scaled_emissions, emission_max, valid, block=None):
    """:func:`_sequential_forward`'s messages by a blocked scan; rows in any order. Returns
    ``(h, c, blocks)``; ``blocks`` (the block matrices) are what :func:`_scan_backward` needs.

    Probability space, steps cut into ``B`` blocks of ``K``: (1) ``K`` batched steps build all
    block matrices (:func:`_block_matrices`); (2) ``B`` vector steps in log space carry the
    message across blocks; (3) ``K`` batched vector steps fill in every block. Sequential
    depth ``2K + B`` instead of ``T``; memory ``O(N·T·S)`` (block matrices: ``N·T·S²/K``).
    """
    n, t_total, s = scaled_emissions.shape
    h_init, c_init = _scaled(init_logits)
    h0, c0 = h_init * scaled_emissions[:, 0], c_init + emission_max[:, 0]
    if t_total == 1:
        return h0.unsqueeze(1), c0.unsqueeze(1), ()
    steps = _blocked_steps(probs, shift, scaled_emissions, emission_max, valid, block)
    k, b = steps.keep.shape[:2]
    x, row_scale = _block_matrices(steps)
    # (2) the message entering each block
    log_v = torch.log(h0)
    entering = [log_v]
    for i in range(b - 1):
        log_v = log_v + row_scale[i]
        top = _finite_max(log_v, -1)
        log_v = torch.log((torch.exp(log_v - top).unsqueeze(-2) @ x[i]).squeeze(-2)) + top
        entering.append(log_v)
    v, c_entering = _scaled(torch.stack(entering))  # [B, N, S], [B, N]
    # (3) alpha_t, time-major: slot 1 + bK + j is step j of block b
    h = h0.new_empty(1 + b * k, n, s)
    h[0] = h0
    h_steps = h[1:].view(b, k, n, s)
    norms = h0.new_empty(k, b, n)
    for j in range(k):
        u, z = _normalised(steps.times(v, j).mul_(steps.emissions[j]))
        v, norms[j] = steps.hold(u, v, z, j)
        h_steps[:, j] = v
    c = c_entering + torch.cumsum(torch.log(norms) + steps.increments, dim=0)
    c = torch.cat([c0.unsqueeze(0), c.transpose(0, 1).reshape(b * k, n) + c0])
    return h[:t_total].transpose(0, 1), c[:t_total].T, (x, row_scale)


def _scan_backward(probs, shift, scaled_emissions, emission_max, valid, blocks, block=None):
    """:func:`_sequential_backward`'s messages from the forward pass's block matrices: block
    ``b`` maps ``beta`` at its last step to ``beta`` before its first, ``F_b @ beta``; then ``K``
    batched steps ``beta_{t-1} = A_t (g_t * beta_t)`` fill in every block, last step first."""
    n, t_total, s = scaled_emissions.shape
    if t_total == 1:
        return scaled_emissions.new_ones(n, 1, s), emission_max.new_zeros(n, 1)
    x, row_scale = blocks
    steps = _blocked_steps(probs, shift, scaled_emissions, emission_max, valid, block)
    k, b = steps.keep.shape[:2]
    # beta at each block's last step b*K + K; past T - 1 (and past a length) it is ones
    log_v = torch.zeros_like(row_scale[0])
    leaving = [log_v]
    for i in range(b - 1, 0, -1):
        top = _finite_max(log_v, -1)
        log_v = torch.log((x[i] @ torch.exp(log_v - top).unsqueeze(-1)).squeeze(-1))
        log_v = log_v + row_scale[i] + top
        leaving.append(log_v)
    v, c_leaving = _scaled(torch.stack(leaving[::-1]))  # [B, N, S], [B, N]
    # beta_t, time-major: slot bK + j is filled by step j of block b, j = K-1..0
    h = v.new_empty(b * k + 1, n, s)
    h[-1] = 1.0
    h_steps = h[:-1].view(b, k, n, s)
    norms = v.new_empty(k, b, n)
    for j in range(k - 1, -1, -1):
        u, z = _normalised(steps.times(v * steps.emissions[j], j, transpose=True))
        v, norms[j] = steps.hold(u, v, z, j)
        h_steps[:, j] = v
    c = c_leaving + (torch.log(norms) + steps.increments).flip(0).cumsum(0).flip(0)
    c = torch.cat([c.transpose(0, 1).reshape(b * k, n), c.new_zeros(1, n)])
    return h[:t_total].transpose(0, 1), c[:t_total].T
