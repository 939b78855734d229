"""Fast chain path: exact inference for a hidden Markov chain whose time is a tensor dimension.

The generic engine eliminates a python-loop chain one traced site at a time. When the model is
known to be a first-order chain, the same numbers come out of a fused forward algorithm over
``emission_log_probs[N, T, S]`` at a small fraction of the cost:

* :func:`chain_log_likelihood` -- ``log p(y_n)`` per sequence, with its *own* adjoint (a
  forward-backward pass in :class:`_ChainLogZ`) instead of autograd through every step. Two
  ways to compute the messages: ``method="sequential"`` (one vector-matrix product per step)
  and ``method="scan"`` (blocked scan: ``K`` batched steps build all ``T/K`` block matrices,
  ``O(K + T/K)`` python steps instead of ``T``, for long chains). Both keep ``O(N·T·S)`` memory.
* :func:`chain_map` -- Viterbi states (equal to Pyro's ``infer_discrete(temperature=0)``).
* :func:`chain_sample` -- one exact joint posterior draw (forward filtering, backward sampling).
* :func:`bernoulli_emission_log_probs` -- all steps' emission log-probs in one matmul.
* :func:`chain_factor` -- the Pyro-facing door: ``pyro.factor`` of the chain marginal.

Conventions (all functions). ``S`` states, ``N`` sequences, ``T`` steps.

* ``init_logits [S]``: log-weight of ``x_0``.
* ``trans_logits [S, S]`` (homogeneous) or ``[T, S, S]``: ``trans_logits[t][i, j]`` is the
  log-weight of ``x_{t-1}=i -> x_t=j``; ``trans_logits[0]`` is unused (gets zero gradient).
* ``emission_log_probs [N, T, S]``: ``log p(y_{n,t} | x_t = s)``.
* ``lengths [N]`` (long, ``1 <= lengths <= T``, default all ``T``): steps ``t >= lengths[n]``
  are ignored entirely. For normalised transitions this equals Pyro's python-loop chain with the
  emissions masked (``poutine.mask`` leaves enumerated sites unmasked there, and a padded
  step's state then sums to one).

Weights need not be normalised: the result is the log of the sum over all paths. Numerics are
scaled probability space: every message (and every row of a scan block matrix) is normalised to
sum one after each product and its log-norm kept; states unreachable from every state of
non-negligible weight underflow to ``-inf`` as in any scaled forward algorithm.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = [
    "chain_log_likelihood",
    "chain_map",
    "chain_sample",
    "bernoulli_emission_log_probs",
    "chain_factor",
]


# -- scaling ---------------------------------------------------------------------------------


def _row_max(x: torch.Tensor) -> torch.Tensor:
    """``x.amax(-1, keepdim=True)``; for many short rows by halving (elementwise maxima are
    about twice as fast as torch's reduction over a last dim of ~16 on CPU)."""
    if x.numel() < 2**16 or x.shape[-1] < 8:
        return x.amax(dim=-1, keepdim=True)
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        top = torch.maximum(x[..., :half], x[..., half : 2 * half])
        x = torch.cat([top, x[..., 2 * half :]], -1) if x.shape[-1] % 2 else top
    return x


def _finite_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``amax`` keeping the dim, usable as a shift for rows that are all ``-inf``."""
    m = _row_max(x) if dim in (-1, x.dim() - 1) else x.amax(dim=dim, keepdim=True)
    # clamping -inf to the lowest float keeps x - m at -inf (not NaN) with one cheap op
    return m.clamp(min=torch.finfo(x.dtype).min)


# -- messages: alpha_t = (alpha_{t-1} @ A_t) * g_t, beta_{t-1} = A_t @ (g_t * beta_t) -----------
#
# Both in scaled probability space, as ``(h, c)`` with ``log message = log h + c``; a step
# ``t >= length`` is an identity. Two back ends: one step at a time, or a blocked scan.


def _scaled(x: torch.Tensor):
    """``(h, c)`` with ``x = log h + c[..., None]`` and ``max h = 1`` along the last dim."""
    c = _finite_max(x, -1)
    return torch.exp(x - c), c.squeeze(-1)


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
    step_probs_t = [probs[0].T.contiguous()] * t_total if probs.shape[0] == 1 else list(
        probs.transpose(-1, -2).contiguous())
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


def _normalised(u):
    """Rows of ``u`` scaled to sum one (in place) and their sums; a zero row stays zero."""
    z = u.sum(-1, keepdim=True).clamp_(min=torch.finfo(u.dtype).tiny)
    return u.div_(z), z.squeeze(-1)


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
    ends_at = {j: (ending_b[ending_j == j], ending_n[ending_j == j])
               for j in ending_j.unique().tolist()}
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


METHODS = ("sequential", "scan")


def auto_method(rows: int, steps: int, states: int) -> str:
    """The faster ``method`` for ``rows`` chains of ``steps`` steps and ``states`` states, as
    measured on one CPU thread: the scan saves python steps but costs ``S`` times the
    arithmetic, so it wins on long chains with little work per step (T=10^5, N=1: scan 5x
    faster at S=16, 2x slower at S=64)."""
    return "scan" if steps >= 1024 and rows * states * states < 4096 else "sequential"


# -- log-likelihood with its own adjoint -------------------------------------------------------


def _prepare(init_logits, trans_logits, emission_log_probs, lengths):
    n, t, s = emission_log_probs.shape
    if init_logits.shape != (s,):
        raise ValueError(f"init_logits must have shape [S]={s}, got {tuple(init_logits.shape)}")
    if trans_logits.shape not in ((s, s), (t, s, s)):
        raise ValueError(
            f"trans_logits must have shape [S, S] or [T, S, S] with S={s}, T={t}; "
            f"got {tuple(trans_logits.shape)}"
        )
    if lengths is None:
        lengths = torch.full((n,), t, dtype=torch.long, device=emission_log_probs.device)
    lengths = torch.as_tensor(lengths, device=emission_log_probs.device)
    if lengths.shape != (n,) or bool((lengths < 1).any()) or bool((lengths > t).any()):
        raise ValueError(f"lengths must be [N]={n} integers in 1..T={t}, got {lengths.tolist()}")
    valid = torch.arange(t, device=lengths.device) < lengths.unsqueeze(-1)  # [N, T]
    return valid


def _transition_probs(trans):
    """``(exp(A - shift), shift [T|1, 1, 1])``: per-step shifted transition probabilities."""
    shift = _finite_max(trans.flatten(-2), -1).unsqueeze(-1)
    return torch.exp(trans - shift), shift


class _ChainLogZ(torch.autograd.Function):
    """``log Z_n`` with a forward-backward adjoint; saves ``O(N·T·S)`` (scaled forward messages
    and scaled emissions). Rows must be sorted by length, longest first (see ``_sorted``)."""

    @staticmethod
    def forward(ctx, init_logits, trans_logits, emissions, valid, method):
        trans = trans_logits if trans_logits.dim() == 3 else trans_logits.unsqueeze(0)
        probs, shift = _transition_probs(trans)
        scaled_emissions, emission_max = _scaled(emissions)
        if method == "scan":
            h, c, blocks = _scan_forward(init_logits, probs, shift, scaled_emissions,
                                         emission_max, valid)
        else:
            h, c = _sequential_forward(init_logits, probs, shift, scaled_emissions,
                                       emission_max, valid)
            blocks = ()
        log_z = torch.log(h[:, -1].sum(-1)) + c[:, -1]
        ctx.save_for_backward(trans_logits, scaled_emissions, emission_max, valid, h, c, log_z,
                              *blocks)
        ctx.method = method
        return log_z

    @staticmethod
    def backward(ctx, grad):
        (trans_logits, scaled_emissions, emission_max, valid, h_alpha, c_alpha, log_z,
         *blocks) = ctx.saved_tensors
        trans = trans_logits if trans_logits.dim() == 3 else trans_logits.unsqueeze(0)
        probs, shift = _transition_probs(trans)
        if ctx.method == "scan":
            h_beta, c_beta = _scan_backward(probs, shift, scaled_emissions, emission_max, valid,
                                            blocks)
        else:
            h_beta, c_beta = _sequential_backward(probs, shift, scaled_emissions, emission_max,
                                                  valid)
        weight = torch.where(valid, grad.unsqueeze(-1), torch.zeros((), dtype=grad.dtype))
        # posterior marginals gamma_t = exp(alpha_t + beta_t - log Z) = d log Z / d e_t
        gamma = h_alpha * h_beta * (torch.exp(c_alpha + c_beta - log_z[:, None]) * weight)[..., None]
        # pairwise xi_t[i, j] = exp(alpha_{t-1}[i] + A_t[i, j] + e_t[j] + beta_t[j] - log Z)
        scale = c_alpha[:, :-1] + emission_max[:, 1:] + c_beta[:, 1:] - log_z[:, None]
        if trans.shape[0] == 1:
            w = torch.exp(scale + shift.reshape(())) * weight[:, 1:]
            # summed over all (n, t): flatten in the messages' own (time-major) memory order
            left = (h_alpha[:, :-1] * w[..., None]).transpose(0, 1).reshape(-1, probs.shape[-1])
            right = (scaled_emissions[:, 1:] * h_beta[:, 1:]).transpose(0, 1).reshape(
                -1, probs.shape[-1])
            grad_trans = (left.T @ right) * probs[0]
        else:
            w = torch.exp(scale + shift[1:].reshape(1, -1)) * weight[:, 1:]
            pair = torch.einsum("nti,ntj->tij", h_alpha[:, :-1] * w[..., None],
                                scaled_emissions[:, 1:] * h_beta[:, 1:])
            grad_trans = torch.cat([torch.zeros_like(trans[:1]), pair * probs[1:]])
        return gamma[:, 0].sum(0), grad_trans.reshape(trans_logits.shape), gamma, None, None


def _sorted(lengths):
    """Permutation putting the longest sequences first (``None`` if already so)."""
    if bool((lengths[:-1] >= lengths[1:]).all()):
        return None
    return torch.argsort(lengths, descending=True, stable=True)


def chain_log_likelihood(init_logits, trans_logits, emission_log_probs, lengths=None,
                         method="sequential"):
    """``log sum_x p(x, y_n)`` for every sequence: a tensor ``[N]``, differentiable in all three
    log-weight arguments through a fused forward-backward adjoint.

    ``method``: ``"sequential"`` (one step at a time; fastest for short chains, many sequences
    or many states) or ``"scan"`` (blocked scan: ``O(sqrt T)`` python steps but ``S`` times
    the arithmetic; for long chains of few sequences and states, e.g. ``T=10^4, N=4, S=16``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    valid = _prepare(init_logits, trans_logits, emission_log_probs, lengths)
    order = _sorted(valid.sum(1))
    if order is None:
        return _ChainLogZ.apply(init_logits, trans_logits, emission_log_probs, valid, method)
    log_z = _ChainLogZ.apply(init_logits, trans_logits, emission_log_probs[order], valid[order],
                             method)
    return log_z[torch.argsort(order)]


# -- decoding ----------------------------------------------------------------------------------


def _max_messages(init_logits, trans_logits, emissions, valid):
    """Viterbi scores ``delta [N, S]`` at the end and back-pointers ``[N, T, S]``.

    Time-major inside, with each transition matrix transposed so that the maximum over the
    previous state runs along contiguous memory (first maximum on ties, as before).
    """
    n, t_total, s = emissions.shape
    trans = trans_logits if trans_logits.dim() == 3 else trans_logits.unsqueeze(0)
    by_next = trans.transpose(-1, -2).contiguous()  # [T|1, next, prev]
    emissions_by_step = emissions.transpose(0, 1).contiguous()
    keep_by_step = valid.T.unsqueeze(-1)
    all_kept = valid.all(0).tolist()
    identity = torch.arange(s, device=emissions.device).expand(n, s)
    pointers = identity.new_empty(t_total, n, s)
    pointers[0] = identity
    delta = init_logits + emissions_by_step[0]
    for t in range(1, t_total):
        best, arg = (delta.unsqueeze(-2) + by_next[t if by_next.shape[0] > 1 else 0]).max(-1)
        if all_kept[t]:
            pointers[t] = arg
            delta = best.add_(emissions_by_step[t])
        else:
            keep = keep_by_step[t]
            delta = torch.where(keep, best + emissions_by_step[t], delta)
            pointers[t] = torch.where(keep, arg, identity)
    return delta, pointers.transpose(0, 1)


def _follow(pointers, last):
    """States ``[N, T]`` from back-pointers, given the final states ``[N]``."""
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
    ``infer_discrete`` (which masks the enumerated sites there) the first state wins.
    """
    valid = _prepare(init_logits, trans_logits, emission_log_probs, lengths)
    delta, pointers = _max_messages(init_logits, trans_logits, emission_log_probs, valid)
    return _follow(pointers, delta.argmax(-1)) * valid


@torch.no_grad()
def chain_sample(init_logits, trans_logits, emission_log_probs, lengths=None, generator=None):
    """One joint posterior draw of the state path (forward filtering, backward sampling),
    LongTensor ``[N, T]``; steps ``t >= lengths[n]`` are 0 (as in :func:`chain_map`)."""
    valid = _prepare(init_logits, trans_logits, emission_log_probs, lengths)
    trans = trans_logits if trans_logits.dim() == 3 else trans_logits.unsqueeze(0)
    order = _sorted(valid.sum(1))
    order = torch.arange(valid.shape[0]) if order is None else order
    probs, shift = _transition_probs(trans)
    h, _ = _sequential_forward(init_logits, probs, shift, *_scaled(emission_log_probs[order]),
                               valid[order])
    alpha = torch.log(h)[torch.argsort(order)]  # per-row constants do not matter below
    n, t_total, s = emission_log_probs.shape

    def draw(logits):
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    states = torch.empty(n, t_total, dtype=torch.long, device=alpha.device)
    x = draw(alpha[:, -1])
    for t in range(t_total - 1, -1, -1):
        states[:, t] = x
        if t == 0:
            break
        a = trans[0 if trans.shape[0] == 1 else t]
        back = alpha[:, t - 1] + a[:, x].T  # p(x_{t-1} | x_t, y_{<t})
        x = torch.where(valid[:, t], draw(back), x)
    return states * valid


# -- emissions and the Pyro door ---------------------------------------------------------------


def bernoulli_emission_log_probs(observations, probs):
    """``log p(y_{n,t} | x_t = s)`` for independent Bernoulli keys: ``[N, T, S]``.

    ``observations [N, T, K]`` in {0, 1}; ``probs [S, K]``. One matmul for all steps:
    ``y @ (log p - log(1 - p)).T + sum_k log(1 - p)``.
    """
    log_p, log_q = torch.log(probs), torch.log1p(-probs)
    return observations @ (log_p - log_q).T + log_q.sum(-1)


def chain_factor(name, init_logits, trans_logits, emission_log_probs, lengths=None,
                 method="sequential"):
    """``pyro.factor(name, chain_log_likelihood(...))``: use inside a ``pyro.plate`` over the
    ``N`` sequences (dim -1) to make a model's log-joint the chain marginal; returns it [N]."""
    import pyro

    log_z = chain_log_likelihood(init_logits, trans_logits, emission_log_probs, lengths, method)
    pyro.factor(name, log_z)
    return log_z


# -- per-sequence transitions ------------------------------------------------------------------
# Decoding masks the enumerated sites too (as Pyro's infer_discrete does), which makes a padded
# step's transition factor differ per sequence: ``trans [N, T, S, S]``. These simple kernels
# (autograd, no fused adjoint) serve that case; ``trans[:, 0]`` is unused.


def _batched_forward(emissions, trans, reduce):
    messages = [emissions[:, 0]]
    for t in range(1, emissions.shape[1]):
        messages.append(reduce(messages[-1].unsqueeze(-1) + trans[:, t], -2) + emissions[:, t])
    return messages


def batched_chain_log_likelihood(emissions, trans):
    """``log sum`` over paths per sequence, ``[N]``; ``trans [N, T, S, S]``."""
    return torch.logsumexp(_batched_forward(emissions, trans, torch.logsumexp)[-1], -1)


@torch.no_grad()
def batched_viterbi(emissions, trans):
    """Best path log-weight ``[N]`` and back-pointers ``[N, T, S]`` (first maximum on ties),
    with per-sequence ``trans [N, T, S, S]``; :func:`_follow` turns them into states."""
    n, t_total, s = emissions.shape
    pointers = torch.arange(s, device=emissions.device).expand(n, t_total, s).clone()
    delta = emissions[:, 0]
    for t in range(1, t_total):
        best, pointers[:, t] = (delta.unsqueeze(-1) + trans[:, t]).max(dim=-2)
        delta = best + emissions[:, t]
    return delta, pointers


@torch.no_grad()
def masked_viterbi(emissions, trans, mask):
    """:func:`batched_viterbi` for transitions ``where(mask [N, T], trans [T, S, S], 0)``,
    without building the ``[N, T, S, S]`` tensor: a masked step leaves every state the best
    predecessor's score."""
    n, t_total, s = emissions.shape
    pointers = torch.arange(s, device=emissions.device).expand(n, t_total, s).clone()
    delta = emissions[:, 0]
    all_kept = mask.all(0).tolist()
    trans_by_next = trans.transpose(-1, -2).contiguous()  # reduce over the contiguous dim
    for t in range(1, t_total):
        best, arg = (delta.unsqueeze(-2) + trans_by_next[t]).max(dim=-1)
        if not all_kept[t]:
            free, free_arg = delta.max(dim=-1, keepdim=True)
            keep = mask[:, t, None]
            best = torch.where(keep, best, free)
            arg = torch.where(keep, arg, free_arg)
        pointers[:, t] = arg
        delta = best + emissions[:, t]
    return delta, pointers


def batched_chain_map(emissions, trans):
    """Viterbi states ``[N, T]`` with per-sequence transitions."""
    delta, pointers = batched_viterbi(emissions, trans)
    return _follow(pointers, delta.argmax(-1))


@torch.no_grad()
def batched_chain_sample(emissions, trans, generator=None):
    """One posterior path ``[N, T]`` per sequence (forward filtering, backward sampling)."""
    alphas = _batched_forward(emissions, trans, torch.logsumexp)
    n, t_total, s = emissions.shape

    def draw(logits):
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)

    states = emissions.new_empty(n, t_total, dtype=torch.long)
    x = draw(alphas[-1])
    for t in range(t_total - 1, -1, -1):
        states[:, t] = x
        if t:
            column = trans[:, t].gather(-1, x.view(n, 1, 1).expand(n, s, 1)).squeeze(-1)
            x = draw(alphas[t - 1] + column)
    return states
