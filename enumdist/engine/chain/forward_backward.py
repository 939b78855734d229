"""``log Z`` of a chain per sequence, with a fused forward-backward adjoint (:class:`_ChainLogZ`)
instead of autograd through every step; and the simple autograd kernel for per-sequence
transitions ``[N, T, S, S]`` (decoding's masked padded steps)."""

from __future__ import annotations

import torch

from enumdist.engine.chain.scaling import _scaled, _transition_probs
from enumdist.engine.chain.scan import _scan_backward, _scan_forward
from enumdist.engine.chain.sequential import _sequential_backward, _sequential_forward

METHODS = ("sequential", "scan")


def auto_method(rows: int, steps: int, states: int) -> str:
    """The faster ``method`` for ``rows`` chains of ``steps`` steps and ``states`` states, as
    measured on one CPU thread: the scan saves python steps but costs ``S`` times the
    arithmetic, so it wins on long chains with little work per step (T=10^5, N=1: scan 5x
    faster at S=16, 2x slower at S=64)."""
    return "scan" if steps >= 1024 and rows * states * states < 4096 else "sequential"


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


class _ChainLogZ(torch.autograd.Function):
    """``log Z_n`` with a forward-backward adjoint; saves ``O(N·T·S)`` (scaled forward messages
    and scaled emissions). Rows must be sorted by length, longest first (see ``_sorted``)."""

    @staticmethod
    def forward(ctx, init_logits, trans_logits, emissions, valid, method):
        trans = trans_logits if trans_logits.dim() == 3 else trans_logits.unsqueeze(0)
        probs, shift = _transition_probs(trans)
        scaled_emissions, emission_max = _scaled(emissions)
        if method == "scan":
            h, c, blocks = _scan_forward(
                init_logits, probs, shift, scaled_emissions, emission_max, valid
            )
        else:
            h, c = _sequential_forward(
                init_logits, probs, shift, scaled_emissions, emission_max, valid
            )
            blocks = ()
        log_z = torch.log(h[:, -1].sum(-1)) + c[:, -1]
        ctx.save_for_backward(
            trans_logits, scaled_emissions, emission_max, valid, h, c, log_z, *blocks
        )
        ctx.method = method
        return log_z

    @staticmethod
    def backward(ctx, grad):
        (trans_logits, scaled_emissions, emission_max, valid, h_alpha, c_alpha, log_z, *blocks) = (
            ctx.saved_tensors
        )
        trans = trans_logits if trans_logits.dim() == 3 else trans_logits.unsqueeze(0)
        probs, shift = _transition_probs(trans)
        if ctx.method == "scan":
            h_beta, c_beta = _scan_backward(
                probs, shift, scaled_emissions, emission_max, valid, blocks
            )
        else:
            h_beta, c_beta = _sequential_backward(
                probs, shift, scaled_emissions, emission_max, valid
            )
        weight = torch.where(valid, grad.unsqueeze(-1), torch.zeros((), dtype=grad.dtype))
        # posterior marginals gamma_t = exp(alpha_t + beta_t - log Z) = d log Z / d e_t
        gamma = (
            h_alpha * h_beta * (torch.exp(c_alpha + c_beta - log_z[:, None]) * weight)[..., None]
        )
        # pairwise xi_t[i, j] = exp(alpha_{t-1}[i] + A_t[i, j] + e_t[j] + beta_t[j] - log Z)
        scale = c_alpha[:, :-1] + emission_max[:, 1:] + c_beta[:, 1:] - log_z[:, None]
        if trans.shape[0] == 1:
            w = torch.exp(scale + shift.reshape(())) * weight[:, 1:]
            # summed over all (n, t): flatten in the messages' own (time-major) memory order
            left = (h_alpha[:, :-1] * w[..., None]).transpose(0, 1).reshape(-1, probs.shape[-1])
            right = (
                (scaled_emissions[:, 1:] * h_beta[:, 1:])
                .transpose(0, 1)
                .reshape(-1, probs.shape[-1])
            )
            grad_trans = (left.T @ right) * probs[0]
        else:
            w = torch.exp(scale + shift[1:].reshape(1, -1)) * weight[:, 1:]
            pair = torch.einsum(
                "nti,ntj->tij",
                h_alpha[:, :-1] * w[..., None],
                scaled_emissions[:, 1:] * h_beta[:, 1:],
            )
            grad_trans = torch.cat([torch.zeros_like(trans[:1]), pair * probs[1:]])
        return gamma[:, 0].sum(0), grad_trans.reshape(trans_logits.shape), gamma, None, None


def _sorted(lengths):
    """Permutation putting the longest sequences first (``None`` if already so)."""
    if bool((lengths[:-1] >= lengths[1:]).all()):
        return None
    return torch.argsort(lengths, descending=True, stable=True)


def chain_log_likelihood(
    init_logits, trans_logits, emission_log_probs, lengths=None, method="sequential"
):
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
    log_z = _ChainLogZ.apply(
        init_logits, trans_logits, emission_log_probs[order], valid[order], method
    )
    return log_z[torch.argsort(order)]


def _batched_forward(emissions, trans, reduce):
    messages = [emissions[:, 0]]
    for t in range(1, emissions.shape[1]):
        messages.append(reduce(messages[-1].unsqueeze(-1) + trans[:, t], -2) + emissions[:, t])
    return messages


def batched_chain_log_likelihood(emissions, trans):
    """``log sum`` over paths per sequence, ``[N]``; ``trans [N, T, S, S]``."""
    return torch.logsumexp(_batched_forward(emissions, trans, torch.logsumexp)[-1], -1)
