"""One chain's *time* axis split across ranks, with exact results on every rank.

Rank ``r`` of ``W`` holds a contiguous block of the steps of the same ``N`` sequences (its
emissions ``[N, T_r, S]`` and, for time-varying chains, its steps' transitions). The chain is
:class:`enumdist.DiscreteHMM`'s: ``x_{-1} ~ init``, ``x_t ~ trans[t][x_{t-1}]``; ``init`` is
read on rank 0 only. Each operation:

1. agrees on the structure (a small header all-gathered: kind of call, ``N``, ``S``, dtype,
   homogeneous or not); a rank that failed or differs makes every rank raise, never hang;
2. reduces the rank's block to a transfer matrix ``M_r [N, S, S]``: the log-weight of all block
   paths from the state before the block (``i``) to its last state (``j``), built by the
   blocked scan of :mod:`enumdist.engine.chain` (scaled, ``O(sqrt T_r)`` python steps), or the
   max-plus product for Viterbi; rank 0's rows are all its forward message (``x_{-1}`` summed);
3. all-gathers the ``W`` matrices: ``W·N·S²`` numbers per call, whatever ``T``;
4. finishes locally from the boundary messages: the forward message entering the block and the
   backward message leaving it, folded into the block's first and last emissions. The block's
   fused forward-backward then yields ``log Z`` and, by its own adjoint, the exact gradient of
   ``log Z`` with respect to this block's inputs.

Gradients follow the plate sharding convention (:mod:`enumdist.engine.sharding`): each rank's
backward pass returns ``W`` times its block's share, so averaging over ranks (what DDP does,
or :func:`average_gradients`) gives the single-process gradient exactly; don't divide the loss.

MAP paths: every rank backtracks the max-plus transfer matrices to the same boundary states,
then decodes its block between them. Posterior samples: rank 0 draws the boundary states from
their exact joint posterior and broadcasts them; each rank draws its block given both ends.
Memory per rank ``O(T_r·N·S)`` plus ``O(N·S²·sqrt T_r)`` for the scan blocks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as tdist

from enumdist.engine import chain
from enumdist.engine.blocked_viterbi import blocked_chain_map, max_block_matrices, max_product
from enumdist.engine.errors import ModelStructureError, ShardError

__all__ = ["TimeShardedChain", "average_gradients"]

_KINDS = {"log_likelihood": 1, "map": 2, "sample": 3}
_DTYPES = {torch.float32: 1, torch.float64: 2}


class _Block(NamedTuple):
    """This rank's block, checked: every tensor in the kernels' layout."""

    init: torch.Tensor  # [N|1, S] log-weights of x_{-1} (read on rank 0)
    trans: torch.Tensor  # [S, S] or [T_r, S, S]; trans[0] leads into the block's first step
    emissions: torch.Tensor  # [N, T_r, S]

    @property
    def first_trans(self):
        return self.trans if self.trans.dim() == 2 else self.trans[0]


def _check_block(init, trans, emissions) -> _Block:
    if emissions.dim() != 3 or emissions.shape[1] < 1:
        raise ValueError(
            f"emission_log_probs must be [N, T_r >= 1, S], got {tuple(emissions.shape)}"
        )
    n, t, s = emissions.shape
    if trans.shape not in ((s, s), (t, s, s)):
        raise ValueError(
            f"transition_logits must be [S, S] or [T_r, S, S] with S={s}, "
            f"T_r={t} (this rank's steps), got {tuple(trans.shape)}"
        )
    init = init.reshape(-1, s) if init.dim() == 1 else init
    if init.shape not in ((1, s), (n, s)):
        raise ValueError(
            f"initial_logits must be [S] or [N, S] with N={n}, S={s}, got {tuple(init.shape)}"
        )
    return _Block(init, trans, emissions)


def _log_matmul(a, b):
    """``log(exp(a) @ exp(b))`` for ``[..., S, S]`` log matrices, scaled (no overflow)."""
    a_top = chain._finite_max(a, -1)
    b_top = chain._finite_max(b.transpose(-1, -2), -1).transpose(-1, -2)
    return torch.log(torch.exp(a - a_top) @ torch.exp(b - b_top)) + a_top + b_top


def _steps_after_first(block):
    """The blocked-scan inputs for steps ``1..T_r-1`` (the kernels' layout)."""
    trans = block.trans if block.trans.dim() == 3 else block.trans.unsqueeze(0)
    probs, shift = chain._transition_probs(trans)
    scaled, emission_max = chain._scaled(block.emissions)
    valid = torch.ones(block.emissions.shape[:2], dtype=torch.bool, device=block.emissions.device)
    return chain._blocked_steps(probs, shift, scaled, emission_max, valid)


@torch.no_grad()
def _sum_transfer(block, first):
    """``log`` of ``first (x) diag(e_0) (x) prod_{t>=1} A_t diag(e_t)`` per sequence ``[N, S, S]``;
    ``first [N|1, S, S]`` is the log-weight into the block's first state."""
    n, t, s = block.emissions.shape
    head = first + block.emissions[:, 0].unsqueeze(-2)  # [N, S, S]
    if t == 1:
        return head.expand(n, s, s)
    x, row_scale = chain._block_matrices(_steps_after_first(block))  # [B, N, S, S], [B, N, S]
    product, scale = x[0], row_scale[0]  # log P = log product + scale[..., None]
    for b in range(1, x.shape[0]):
        top = chain._finite_max(row_scale[b], -1)
        product, z = chain._normalised(
            (product * torch.exp(row_scale[b] - top).unsqueeze(-2)) @ x[b]
        )
        scale = scale + torch.log(z) + top
    return _log_matmul(head, torch.log(product) + scale.unsqueeze(-1))


@torch.no_grad()
def _max_transfer(block, first):
    """The max-plus counterpart of :func:`_sum_transfer` (best block path per end points)."""
    n, t, s = block.emissions.shape
    x = (first + block.emissions[:, 0].unsqueeze(-2)).expand(n, s, s)
    if t > 1:
        valid = torch.ones(n, t, dtype=torch.bool, device=x.device)
        for m in max_block_matrices(block.trans, block.emissions, valid):
            x = max_product(x, m)
    return x


def _vector_pass_inputs(block, emissions):
    trans = block.trans if block.trans.dim() == 3 else block.trans.unsqueeze(0)
    probs, shift = chain._transition_probs(trans)
    valid = torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
    return (probs, shift, *chain._scaled(emissions), valid)


@torch.no_grad()
def _forward_vector(block, entering):
    """``log`` of the forward message at the block's last state ``[N, S]``, given the
    log-weights ``entering [N|1, S]`` of its first state: one vector pass, ``O(T_r·S²)``."""
    e = block.emissions
    e = torch.cat([e[:, :1] + entering.unsqueeze(1), e[:, 1:]], 1)
    h, c = chain._sequential_forward(e.new_zeros(e.shape[-1]), *_vector_pass_inputs(block, e))
    return torch.log(h[:, -1]) + c[:, -1, None]


@torch.no_grad()
def _backward_vector(block, first):
    """``log sum_j M[i, j]`` ``[N, S]``: the block's evidence given the state ``i`` before it
    (``first [N|1, S, S]`` leads into its first state); one backward vector pass."""
    e = block.emissions
    h, c = chain._sequential_backward(*_vector_pass_inputs(block, e))
    into_first = e[:, 0] + torch.log(h[:, 0]) + c[:, 0, None]  # [N, S] over the first state
    return torch.logsumexp(first + into_first.unsqueeze(-2), -1)


def _fold(block, entering, leaving):
    """The block's emissions with the entering log-weights ``[N, S]`` (over its first state) and
    the leaving backward message ``[N, S]`` (over its last state) folded in."""
    e = block.emissions
    if e.shape[1] == 1:
        return e + (entering + leaving).unsqueeze(1)
    return torch.cat(
        [(e[:, :1] + entering.unsqueeze(1)), e[:, 1:-1], (e[:, -1:] + leaving.unsqueeze(1))], 1
    )


class TimeShardedChain:
    """Exact inference on chains whose time axis is split over the ranks of ``group``.

    Every method takes this rank's block: ``initial_logits [S] | [N, S]`` (log-weights of the
    state before step 0; read on rank 0, pass the same on all), ``transition_logits [S, S]``
    (homogeneous) or ``[T_r, S, S]`` (this rank's steps; ``[0]`` leads into its first step),
    and ``emission_log_probs [N, T_r, S]``. Ranks may hold different numbers of steps.
    ``bytes_communicated`` is the size of the last call's collectives on this rank.
    ``method``: the block's forward-backward, as in
    :func:`enumdist.engine.chain.chain_log_likelihood`, or ``"auto"``.
    """

    def __init__(self, group=None, method="auto"):
        if not (tdist.is_available() and tdist.is_initialized()):
            raise RuntimeError(
                "TimeShardedChain needs torch.distributed to be initialised "
                "(init_process_group); on one process use enumdist.DiscreteHMM"
            )
        self.group = group
        self.rank = tdist.get_rank(group)
        self.world_size = tdist.get_world_size(group)
        self.method = method
        self.bytes_communicated = 0

    # -- collectives ------------------------------------------------------------------------

    def _all_gather(self, tensor):
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        tdist.all_gather(out, tensor, group=self.group)
        self.bytes_communicated += tensor.numel() * tensor.element_size() * self.world_size
        return out

    def _agree(self, kind, init, trans, emissions) -> _Block:
        """Check this rank's block, then agree with every rank that all blocks fit together."""
        self.bytes_communicated = 0
        error, block = None, None
        try:
            block = _check_block(init, trans, emissions)
            n, _, s = block.emissions.shape
            header = [0, _KINDS[kind], n, s, block.trans.dim(), _DTYPES.get(emissions.dtype, 0)]
        except Exception as exc:  # reported to every rank below
            error, header = exc, [1, _KINDS[kind], 0, 0, 0, 0]
        headers = [h.tolist() for h in self._all_gather(torch.tensor(header, dtype=torch.int64))]
        failed = [r for r, h in enumerate(headers) if h[0]]
        if failed:
            if error is not None:
                raise ShardError(
                    f"time-sharded {kind}: rank {self.rank} failed: {error}"
                ) from error
            raise ShardError(
                f"time-sharded {kind} stopped on every rank: rank(s) {failed} "
                f"failed to prepare their block (see their error)"
            )
        names = ("call", "N", "S", "transition dims", "dtype")
        for i, name in enumerate(names, start=1):
            values = [h[i] for h in headers]
            if len(set(values)) > 1:
                raise ModelStructureError(
                    f"time-sharded chain: ranks disagree on {name} ({values} on ranks "
                    f"0..{self.world_size - 1}); every rank must hold the same sequences and "
                    f"states, in the same dtype, with transitions of the same form, and make the "
                    f"same call"
                )
        assert block is not None  # no rank failed, this one included
        return block

    def _entering_first(self, block):
        """Log-weights into the block's first state from the state before it, ``[N|1, S, S]``;
        on rank 0 every row is ``p(x_0) = sum_i init[i] trans[0][i, x_0]``."""
        a = block.first_trans
        if self.rank == 0:
            prior = torch.logsumexp(block.init.unsqueeze(-1) + a, -2)  # [N|1, S]
            return prior.unsqueeze(-2).expand(prior.shape[0], a.shape[-1], a.shape[-1])
        return a.unsqueeze(0)

    def _boundaries(self, block, transfer):
        """All ranks' transfer matrices ``[W, N, S, S]`` (no gradient)."""
        return torch.stack(self._all_gather(transfer(block, self._entering_first(block).detach())))

    def _likelihood_transfer(self, block, first):
        """What ``log_likelihood`` needs of this block, as an ``[N, S, S]`` matrix. The first
        block's rows are all its forward message and the last block is only ever summed over
        its end state, so where the block runs sequentially (``chain.auto_method``: many states)
        those two send vector passes, ``O(T_r·S²)``, instead of the ``O(T_r·S³)`` matrix
        product: with two ranks no rank multiplies matrices. The last block's vector sits in
        column 0 (the other columns ``-inf``), so summing over the end state reads it."""
        n, t, s = block.emissions.shape
        first_rank, last_rank = self.rank == 0, self.rank == self.world_size - 1
        if chain.auto_method(n, t, s) == "scan" or not (first_rank or last_rank):
            return _sum_transfer(block, first)
        if first_rank:
            return _forward_vector(block, first[:, 0]).unsqueeze(-2).expand(n, s, s)
        out = block.emissions.new_full((n, s, s), -float("inf"))
        out[..., 0] = _backward_vector(block, first)
        return out

    # -- log-likelihood -----------------------------------------------------------------------

    def log_likelihood(self, initial_logits, transition_logits, emission_log_probs):
        """``log p(y)`` of every whole sequence ``[N]`` (the same on every rank); its backward
        pass gives ``W`` x this block's share of the gradient (average over ranks)."""
        block = self._agree("log_likelihood", initial_logits, transition_logits, emission_log_probs)
        m = self._boundaries(block, self._likelihood_transfer)
        forward = m[0, :, 0]  # [N, S] over rank 0's last state
        for q in range(1, self.rank):
            forward = torch.logsumexp(forward.unsqueeze(-1) + m[q], -2)
        backward = torch.zeros_like(forward)
        for q in range(self.world_size - 1, self.rank, -1):
            backward = torch.logsumexp(m[q] + backward.unsqueeze(-2), -1)
        if self.rank == 0:
            entering = self._entering_first(block)[:, 0]
        else:
            entering = torch.logsumexp(forward.unsqueeze(-1) + block.first_trans, -2)
        emissions = _fold(block, entering.expand_as(block.emissions[:, 0]), backward)
        s = emissions.shape[-1]
        method = self.method
        if method == "auto":
            method = chain.auto_method(*emissions.shape)
        log_z = chain.chain_log_likelihood(
            emissions.new_zeros(s), block.trans, emissions, method=method
        )
        w = self.world_size
        return log_z + (w - 1) * (log_z - log_z.detach())  # value log Z, gradient W x share

    # -- decoding ---------------------------------------------------------------------------

    @torch.no_grad()
    def map(self, initial_logits, transition_logits, emission_log_probs):
        """Viterbi: this block's part of the MAP path ``[N, T_r]`` and the path's
        ``log p(x, y)`` ``[N]`` (the same on every rank)."""
        block = self._agree("map", initial_logits, transition_logits, emission_log_probs)
        m = self._boundaries(block, _max_transfer)
        best, pointers = m[0, :, 0], []
        for q in range(1, self.world_size):
            best, arg = (best.unsqueeze(-1) + m[q]).max(-2)
            pointers.append(arg)
        ends = [best.argmax(-1)]  # the last state of every block, last block first
        for arg in reversed(pointers):
            ends.append(arg.gather(-1, ends[-1].unsqueeze(-1)).squeeze(-1))
        ends = ends[::-1]  # ends[q]: [N], the path's state at block q's last step

        def decode(e, a):
            viterbi = (
                blocked_chain_map if chain.auto_method(*e.shape) == "scan" else chain.chain_map
            )
            return viterbi(e.new_zeros(e.shape[-1]), a, e)

        states = self._decode_between(block, ends, decode)
        return states, best.max(-1).values

    @torch.no_grad()
    def sample(self, initial_logits, transition_logits, emission_log_probs, generator=None):
        """One joint posterior draw: this block's part ``[N, T_r]`` and the whole path's
        ``log p(x, y)`` ``[N]`` (the same on every rank). ``generator`` is used for the
        boundary states on rank 0 and for this rank's block."""
        block = self._agree("sample", initial_logits, transition_logits, emission_log_probs)
        m = self._boundaries(block, _sum_transfer)
        n = m.shape[1]
        ends = torch.zeros(self.world_size, n, dtype=torch.long)
        if self.rank == 0:
            forwards = [m[0, :, 0]]
            for q in range(1, self.world_size):
                forwards.append(torch.logsumexp(forwards[-1].unsqueeze(-1) + m[q], -2))
            ends[-1] = _draw(forwards[-1], generator)
            for q in range(self.world_size - 1, 0, -1):
                column = m[q].gather(-1, ends[q].view(n, 1, 1).expand(n, m.shape[-1], 1))
                ends[q - 1] = _draw(forwards[q - 1] + column.squeeze(-1), generator)
        tdist.broadcast(ends, src=self._global_rank(0), group=self.group)
        self.bytes_communicated += ends.numel() * ends.element_size()
        states = self._decode_between(
            block,
            list(ends),
            lambda e, a: chain.chain_sample(e.new_zeros(e.shape[-1]), a, e, generator=generator),
        )
        return states, self._path_log_joint(block, ends, states)

    def _global_rank(self, rank):
        return tdist.get_global_rank(self.group, rank) if self.group is not None else rank

    def _decode_between(self, block, ends, decode):
        """Decode this block with its first state's weights given the state before it and its
        last state pinned to ``ends[rank]``."""
        n, _, s = block.emissions.shape
        entering = self._entering_first(block)
        index = torch.zeros(n, dtype=torch.long) if self.rank == 0 else ends[self.rank - 1]
        entering = entering.expand(n, s, s).gather(1, index.view(n, 1, 1).expand(n, 1, s))[:, 0]
        pinned = torch.full((n, s), -float("inf"), dtype=block.emissions.dtype)
        pinned.scatter_(-1, ends[self.rank].unsqueeze(-1), 0.0)
        return decode(_fold(block, entering, pinned), block.trans)

    def _path_log_joint(self, block, ends, states):
        """``log p(x, y)`` of the whole path from every block's part (one all-reduce of ``N``)."""
        n, t, s = block.emissions.shape
        entering = self._entering_first(block).expand(n, s, s)
        before = torch.zeros(n, dtype=torch.long) if self.rank == 0 else ends[self.rank - 1]
        score = entering[torch.arange(n), before, states[:, 0]]
        score = score + block.emissions.gather(-1, states.unsqueeze(-1)).squeeze(-1).sum(-1)
        if t > 1:
            a = block.trans
            steps = (
                a[states[:, :-1], states[:, 1:]]
                if a.dim() == 2
                else a[torch.arange(1, t), states[:, :-1], states[:, 1:]]
            )
            score = score + steps.sum(-1)
        score = score.contiguous()
        tdist.all_reduce(score, group=self.group)
        self.bytes_communicated += score.numel() * score.element_size()
        return score


def _draw(logits, generator):
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)


def average_gradients(parameters, group=None) -> None:
    """Average ``.grad`` over ranks in place (what DDP does): with :class:`TimeShardedChain`
    this turns every rank's gradient into the single-process one."""
    world = tdist.get_world_size(group)
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        tdist.all_reduce(p.grad, group=group)
        p.grad /= world
