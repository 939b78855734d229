"""Scaled probability space for the chain kernels: a log message is kept as ``(h, c)`` with
``log message = log h + c`` and ``max h = 1`` (or rows summing to one), so a step is a matmul."""

from __future__ import annotations

import torch


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


def _scaled(x: torch.Tensor):
    """``(h, c)`` with ``x = log h + c[..., None]`` and ``max h = 1`` along the last dim."""
    c = _finite_max(x, -1)
    return torch.exp(x - c), c.squeeze(-1)


def _normalised(u):
    """Rows of ``u`` scaled to sum one (in place) and their sums; a zero row stays zero."""
    z = u.sum(-1, keepdim=True).clamp_(min=torch.finfo(u.dtype).tiny)
    return u.div_(z), z.squeeze(-1)


def _transition_probs(trans):
    """``(exp(A - shift), shift [T|1, 1, 1])``: per-step shifted transition probabilities."""
    shift = _finite_max(trans.flatten(-2), -1).unsqueeze(-1)
    return torch.exp(trans - shift), shift
