"""``DiscreteHMM``: Pyro's distribution, computed by enumdist's fused chain kernels.

A drop-in for :class:`pyro.distributions.DiscreteHMM` (same constructor, shapes, ``sample``,
``expand`` and support; it *is* one, as a subclass) whose ``log_prob`` runs the fused scaled
forward-backward of :mod:`enumdist.engine.chain` with its own adjoint instead of Pyro's
log-space tree of ``S x S`` matrix products. Additions Pyro's lacks:

* ``lengths`` (broadcastable to the batch shape): sequence ``n`` uses its first
  ``lengths[n]`` steps only, as if truncated there (ragged batches without padding bias);
* :meth:`DiscreteHMM.viterbi` -- the MAP state path, and :meth:`DiscreteHMM.sample_posterior`
  -- exact joint posterior draws, each with the path's log-probabilities (:class:`HMMPath`).

Semantics (Pyro's). ``initial_logits`` is the distribution of a state *before* the first
observation: ``x_{-1} ~ Cat(init)``, ``x_t ~ Cat(trans[t][x_{t-1}])``, ``y_t ~ obs[t](x_t)``
for ``t = 0..T-1``; ``x_{-1}`` is summed out everywhere, so a path is ``x_0..x_{T-1}`` and
its prior is ``p(x_0) = sum_i init[i] trans[0][i, x_0]``. Both logits are normalised as Pyro
does. ``trans`` has shape ``batch + (T|1, S, S)`` (or ``(S, S)``): its dims left of the last
two are time, then batch, as in Pyro.
"""

from __future__ import annotations

from typing import NamedTuple

import pyro.distributions as dist
import torch
from pyro.distributions.hmm import HiddenMarkovModel
from pyro.distributions.util import broadcast_shape

from enumdist.distributions.emissions import observation_log_probs
from enumdist.engine import chain
from enumdist.engine.blocked_viterbi import blocked_chain_map

__all__ = ["DiscreteHMM", "HMMPath"]


class HMMPath(NamedTuple):
    """A decoded state path and its probability; shapes ``batch + (T,)`` and ``batch``."""

    states: torch.Tensor  # long; 0 at steps past a sequence's length
    log_joint: torch.Tensor  # log p(x, y)
    log_posterior: torch.Tensor  # log p(x | y) = log_joint - log p(y)


class _Group(NamedTuple):
    rows: torch.Tensor | None  # indices into the flattened batch; None: all rows
    trans: torch.Tensor  # [S, S] (homogeneous) or [T, S, S], normalised


class _Chains(NamedTuple):
    """One value's factors with the batch flattened to ``N`` rows (see :meth:`_chains`)."""

    batch_shape: torch.Size
    emissions: torch.Tensor  # [N, T, S]; the prior over x_0 is added into step 0
    groups: list  # [_Group]: rows sharing one transition tensor
    lengths: torch.Tensor  # [N] long, 0..T


class DiscreteHMM(dist.DiscreteHMM):
    """:class:`pyro.distributions.DiscreteHMM` computed by enumdist's chain kernels.

    :param lengths: optional integer tensor broadcastable to the batch shape: steps
        ``t >= lengths`` of a sequence are ignored (its value there may be anything in the
        support). A length of 0 gives log-probability 0.
    :param method: ``"sequential"``, ``"scan"`` (see :func:`enumdist.engine.chain.chain_log_likelihood`)
        or ``"auto"`` (:func:`enumdist.engine.chain.auto_method`).
    """

    def __init__(
        self,
        initial_logits,
        transition_logits,
        observation_dist,
        validate_args=None,
        duration=None,
        lengths=None,
        method="auto",
    ):
        super().__init__(
            initial_logits,
            transition_logits,
            observation_dist,
            validate_args=validate_args,
            duration=duration,
        )
        if method not in (*chain.METHODS, "auto"):
            raise ValueError(f"method must be 'auto' or one of {chain.METHODS}, got {method!r}")
        self.method = method
        self.lengths = None
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=self.initial_logits.device)
            if lengths.dtype.is_floating_point or bool((lengths < 0).any()):
                raise ValueError(f"lengths must be non-negative integers, got {lengths}")
            self.lengths = lengths.long()
            batch_shape = torch.Size(broadcast_shape(self.batch_shape, lengths.shape))
            HiddenMarkovModel.__init__(
                self, duration, batch_shape, self.event_shape, validate_args=validate_args
            )

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscreteHMM, _instance)
        super().expand(batch_shape, _instance=new)
        new.method = self.method
        new.lengths = None if self.lengths is None else self.lengths.expand(new.batch_shape)
        return new

    # -- the factors, flattened ---------------------------------------------------------------

    def _chains(self, value) -> _Chains:
        if self._validate_args:
            self._validate_sample(value)
        emissions = observation_log_probs(self.observation_dist, value)  # [..., T', S]
        trans = self.transition_logits
        trans = trans if trans.dim() > 2 else trans.unsqueeze(0)  # [*Bt, T|1, S, S]
        s = trans.shape[-1]
        steps = broadcast_shape(emissions.shape[-2:-1], trans.shape[-3:-2])[0]
        emissions = emissions.expand((*emissions.shape[:-2], steps, s))  # one value, T steps
        if self.lengths is not None and bool((self.lengths > steps).any()):
            raise ValueError(
                f"lengths must be at most the number of steps T={steps}, got "
                f"{self.lengths.max().item()}"
            )
        batch_shape = torch.Size(
            broadcast_shape(
                self.initial_logits.shape[:-1],
                trans.shape[:-3],
                emissions.shape[:-2],
                () if self.lengths is None else self.lengths.shape,
            )
        )
        n = batch_shape.numel()
        # p(x_0) = sum_i init[i] trans[0][i, x_0]: summing x_{-1} out once, every kernel below
        # sees a plain chain over x_0..x_{T-1} whose per-row prior sits in the first emission
        prior = torch.logsumexp(self.initial_logits.unsqueeze(-1) + trans[..., 0, :, :], -2)
        first = emissions[..., :1, :] + prior.unsqueeze(-2)
        emissions = torch.cat(
            [
                first.expand((*batch_shape, 1, s)),
                emissions[..., 1:, :].expand((*batch_shape, steps - 1, s)),
            ],
            -2,
        )
        emissions = emissions.reshape(n, steps, s)
        if self.lengths is None:
            lengths = torch.full((n,), steps, dtype=torch.long, device=emissions.device)
        else:
            lengths = self.lengths.expand(batch_shape).reshape(n)
        return _Chains(batch_shape, emissions, _groups(trans, batch_shape), lengths)

    def _method(self, rows, steps, states):
        return chain.auto_method(rows, steps, states) if self.method == "auto" else self.method

    # -- Pyro's interface -----------------------------------------------------------------------

    def log_prob(self, value):
        c = self._chains(value)
        n, steps, s = c.emissions.shape
        zero = c.emissions.new_zeros(s)
        out = []
        for group in c.groups:
            emissions, lengths = _rows(c.emissions, group), _rows(c.lengths, group)
            log_z = chain.chain_log_likelihood(
                zero,
                group.trans,
                emissions,
                lengths.clamp(min=1),
                self._method(emissions.shape[0], steps, s),
            )
            out.append(torch.where(lengths > 0, log_z, 0.0))
        return _ungroup(out, c.groups, n).reshape(c.batch_shape)

    def filter(self, value):
        """The posterior over the state at each sequence's last step (Pyro's ``filter``), as a
        :class:`pyro.distributions.Categorical`; differentiable (by autograd through a log-space
        forward pass when gradients are needed, else by the scaled forward kernel)."""
        c = self._chains(value)
        n, steps, s = c.emissions.shape
        if bool((c.lengths == 0).any()):
            raise ValueError(
                "DiscreteHMM.filter needs lengths >= 1: a sequence of length 0 has no last step"
            )
        out = []
        for group in c.groups:
            emissions, lengths = _rows(c.emissions, group), _rows(c.lengths, group)
            method = self._method(emissions.shape[0], steps, s)
            out.append(_last_forward_message(emissions, group.trans, lengths, method))
        logits = _ungroup(out, c.groups, n).reshape((*c.batch_shape, s))
        return dist.Categorical(logits=logits, validate_args=self._validate_args)

    def time_sharded_log_prob(self, value, sharded_chain):
        """``log p(y)`` of the whole sequences when this rank holds only a block of their steps:
        ``value [*batch, T_r, ...]``, and this distribution is built from this rank's
        transitions (``[S, S]`` or ``[T_r, S, S]``, no batch dims) and observations. Same on
        every rank; gradients as :class:`enumdist.engine.time_sharding.TimeShardedChain`'s."""
        if self.lengths is not None:
            raise ValueError(
                "time_sharded_log_prob does not take lengths: every rank holds a "
                "block of whole (equally long) sequences"
            )
        trans = self.transition_logits
        if trans.dim() > 3:
            raise ValueError(
                f"time_sharded_log_prob needs transition_logits [S, S] or "
                f"[T_r, S, S] shared by the batch, got {tuple(trans.shape)}"
            )
        if self._validate_args:
            self._validate_sample(value)
        emissions = observation_log_probs(self.observation_dist, value)
        s, steps = (
            emissions.shape[-1],
            broadcast_shape(emissions.shape[-2:-1], trans.shape[-3:-2])[0],
        )
        batch = torch.Size(broadcast_shape(emissions.shape[:-2], self.initial_logits.shape[:-1]))
        emissions = emissions.expand((*batch, steps, s)).reshape(-1, steps, s)
        init = self.initial_logits.expand((*batch, s)).reshape(-1, s)
        trans = trans[0] if trans.dim() == 3 and trans.shape[0] == 1 else trans
        return sharded_chain.log_likelihood(init, trans, emissions).reshape(batch)

    # -- decoding ---------------------------------------------------------------------------

    @torch.no_grad()
    def viterbi(self, value) -> HMMPath:
        """The most probable state path given ``value`` (first maximum on exact ties)."""

        def decode(e, a, lengths):
            zero = e.new_zeros(e.shape[-1])
            if self._method(*e.shape) == "scan":  # long chains: O(sqrt T) python steps
                return blocked_chain_map(zero, a, e, lengths)
            return chain.chain_map(zero, a, e, lengths)

        return self._decode(value, decode)

    @torch.no_grad()
    def sample_posterior(self, value, sample_shape=(), generator=None) -> HMMPath:
        """Exact joint draws of the state path from ``p(x | value)`` (forward filtering,
        backward sampling); shapes ``sample_shape + batch + (T,)``."""
        sample_shape = torch.Size(sample_shape)
        copies = sample_shape.numel()

        def draw(e, a, lengths):
            m, steps, s = e.shape
            tiled = e.expand(copies, m, steps, s).reshape(copies * m, steps, s)
            states = chain.chain_sample(
                e.new_zeros(s), a, tiled, lengths.repeat(copies), generator=generator
            )
            return states.reshape(copies, m, steps).transpose(0, 1)  # [m, copies, T]

        path = self._decode(value, draw)

        def move(x):  # [*batch, copies, ...] -> [*sample_shape, *batch, ...]
            b = len(path.log_joint.shape) - 1
            x = x.movedim(b, 0)
            return x.reshape(sample_shape + x.shape[1:])

        return HMMPath(*(move(x) for x in path))

    def _decode(self, value, decode) -> HMMPath:
        c = self._chains(value)
        n, steps, _ = c.emissions.shape
        states, scores = [], []
        for group in c.groups:
            emissions, lengths = _rows(c.emissions, group), _rows(c.lengths, group)
            x = decode(emissions, group.trans, lengths.clamp(min=1))  # [m, (copies,) T]
            valid = torch.arange(steps, device=x.device) < lengths.reshape(
                (-1,) + (1,) * (x.dim() - 1)
            )
            x = x * valid
            states.append(x)
            scores.append(_path_score(emissions, group.trans, x, valid))
        log_joint = _ungroup(scores, c.groups, n)
        states = _ungroup(states, c.groups, n)
        log_z = self.log_prob(value).reshape((n,) + (1,) * (log_joint.dim() - 1))
        extra = log_joint.shape[1:]
        return HMMPath(
            states.reshape(c.batch_shape + extra + (steps,)),
            log_joint.reshape(c.batch_shape + extra),
            (log_joint - log_z).reshape(c.batch_shape + extra),
        )


# -- helpers -----------------------------------------------------------------------------------


def _groups(trans, batch_shape) -> list:
    """Rows of the flattened batch sharing one transition tensor ``[T|1, S, S]``."""
    t_batch = trans.shape[:-3]

    def as_kernel(a):  # [T|1, S, S] -> the kernel's [S, S] or [T, S, S]
        return a[0] if a.shape[0] == 1 else a

    if t_batch.numel() == 1:
        return [_Group(None, as_kernel(trans.reshape(trans.shape[-3:])))]
    index = torch.arange(t_batch.numel(), device=trans.device).reshape(t_batch)
    index = index.expand(batch_shape).reshape(-1)
    flat = trans.reshape((-1, *trans.shape[-3:]))
    return [
        _Group((index == g).nonzero().squeeze(-1), as_kernel(flat[g]))
        for g in index.unique().tolist()
    ]


def _rows(x, group):
    return x if group.rows is None else x[group.rows]


def _ungroup(parts, groups, n):
    """Per-group results back in the flattened batch's row order."""
    if len(groups) == 1 and groups[0].rows is None:
        return parts[0]
    rows = torch.cat([g.rows for g in groups])
    return torch.cat(parts)[torch.argsort(rows)]


def _transition(trans, t):
    return trans if trans.dim() == 2 else trans[t]


def _last_forward_message(emissions, trans, lengths, method):
    """``log p(x_{L-1}, y_{<L})`` per row ``[N, S]`` (``L`` = length >= 1)."""
    _, steps, s = emissions.shape
    needs_grad = torch.is_grad_enabled() and (emissions.requires_grad or trans.requires_grad)
    if needs_grad:
        alpha = emissions[:, 0]
        out = alpha
        for t in range(1, steps):
            alpha = (
                torch.logsumexp(alpha.unsqueeze(-1) + _transition(trans, t), -2) + emissions[:, t]
            )
            out = torch.where((lengths > t).unsqueeze(-1), alpha, out)
        return out
    with torch.no_grad():
        order = torch.argsort(lengths, descending=True, stable=True)  # as the kernels want
        kernel_trans = trans if trans.dim() == 3 else trans.unsqueeze(0)
        probs, shift = chain._transition_probs(kernel_trans)
        valid = torch.arange(steps, device=lengths.device) < lengths[order][:, None]
        forward = chain._scan_forward if method == "scan" else chain._sequential_forward
        h, c = forward(
            emissions.new_zeros(s), probs, shift, *chain._scaled(emissions[order]), valid
        )[:2]
        # a finished sequence keeps its last message: step T-1 holds step length-1's
        return (torch.log(h[:, -1]) + c[:, -1, None])[torch.argsort(order)]


def _path_score(emissions, trans, states, valid):
    """``log p(x, y)`` of paths ``states [N, ..., T]`` (prior folded into ``emissions[:, 0]``)."""
    n, steps, s = emissions.shape
    extra = states.shape[1:-1]
    e = emissions.reshape((n,) + (1,) * len(extra) + (steps, s)).expand((*states.shape, s))
    score = torch.where(valid, e.gather(-1, states.unsqueeze(-1)).squeeze(-1), 0.0).sum(-1)
    if steps > 1:
        prev, nxt = states[..., :-1], states[..., 1:]
        if trans.dim() == 2:
            step = trans[prev, nxt]
        else:
            step = trans[torch.arange(1, steps, device=states.device), prev, nxt]
        score = score + torch.where(valid[..., 1:], step, 0.0).sum(-1)
    return score
