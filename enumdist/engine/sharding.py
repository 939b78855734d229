"""Sharded plates: a plate's data split across ranks, with exact results on every rank.

A plate is a product of factors -- a sum in log space. :class:`ShardedPlates` is the plate back
end (see ``plates.py``, whose ``plates_for`` builds it) that, whenever a product over a sharded plate is taken, first sums the
rank's own elements and then all-reduces the partial sums. Messages still carry the variables
outside the plate when they are reduced, so a global enumerated variable (a regime shared by all
sequences) is eliminated only after every rank's evidence has been added: the result is exactly
the single-process, full-data one. Averaging per-shard losses instead is wrong as soon as
anything enumerated sits outside the plate.

Gradients and DDP. The all-reduce is differentiable and its backward pass *sums* the incoming
gradients over ranks. Every rank computes the same loss, so rank ``r`` receives
``W * dL/dm`` for its own message ``m_r`` (``W`` ranks), plus the gradient of terms outside the
plate (priors, global guide terms), which every rank computes once. Averaging those parameter
gradients over ranks -- what DDP does, and what ``EnumELBO.loss_and_grads`` does itself when
sharded -- gives ``sum_r dL/dm_r dm_r/dθ + dL_global/dθ``: exactly the full-data gradient, with
terms outside the plate counted once. So: train sharded ``EnumELBO`` with DDP as usual, and do
not divide the loss by the world size. That summing backward is adjoint ``"sum"``. Adjoint
``"own"`` returns the rank's own upstream gradient instead: the exact derivative of the common
result with respect to this rank's inputs, which ``compute_marginals`` needs (its inputs are the
rank's own factors, not shared parameters).

Subsampled sharded plates (``pyro.plate(name, N, subsample=local_idx)``) are rescaled from
``N / local size`` to ``N / total size``, which equals one process using the union of subsamples.

Faults: each call first exchanges a small status (did tracing fail? a hash of the model's
structure, the size of each shard) so that a rank with bad data, a rank whose model differs or
a rank with an empty shard makes *every* rank raise a clear error instead of leaving the others
blocked in an all-reduce.
"""

from __future__ import annotations

import zlib

import torch
import torch.distributed as tdist
from pyro.poutine.indep_messenger import IndepMessenger

from enumdist.engine.errors import ModelStructureError, ShardError
from enumdist.engine.factors import expand_plates
from enumdist.engine.plates import LocalPlates, check_shard_plates
from enumdist.engine.problem import EnumProblem


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks. Backward: the sum of the ranks' gradients (``sum_ranks=True``, for
    training with gradients averaged afterwards) or this rank's own gradient (the exact
    derivative of the common sum with respect to this rank's input)."""

    @staticmethod
    def forward(ctx, tensor, group, sum_ranks):
        ctx.group, ctx.sum_ranks = group, sum_ranks
        out = tensor.clone()
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        if not ctx.sum_ranks:
            return grad, None, None
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM, group=ctx.group)
        return grad, None, None


class ShardedPlates(LocalPlates):
    """Plate back end for plates whose elements are split across the ranks of ``group``."""

    sharded = True

    def __init__(self, shard_plates, group=None, adjoint="sum"):
        if adjoint not in ("sum", "own"):
            raise ValueError(f"adjoint must be 'sum' or 'own', got {adjoint!r}")
        self.shard = frozenset(shard_plates)
        self.group = group
        self.adjoint = adjoint
        self.world_size = tdist.get_world_size(group)
        self.rank = tdist.get_rank(group)
        self.bytes_reduced = 0

    # -- collectives ------------------------------------------------------------------------

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        self.bytes_reduced += tensor.numel() * tensor.element_size()
        return _AllReduceSum.apply(tensor, self.group, self.adjoint == "sum")

    def _src(self) -> int:
        return tdist.get_global_rank(self.group, 0) if self.group is not None else 0

    # -- the plate back-end interface -------------------------------------------------------

    def touches_shard(self, plates) -> bool:
        return bool(self.shard.intersection(plates))

    def average_gradients(self, params) -> int:
        return average_gradients(params, self.group)

    def plate_sum(self, x, positions, absent_count, plates, out_dims=None):
        out = super().plate_sum(x, positions, absent_count, plates, out_dims)
        if not self.touches_shard(plates):
            return out
        return _in_canonical_order(out, out_dims, self.all_reduce)

    def sum_terms(self, local, sharded):
        return local + self.all_reduce(sharded)

    def broadcast_decision(self, value, dims):
        if self.touches_shard(dims):
            return value  # a local variable: each rank decides its own elements

        def broadcast(canonical):
            canonical = canonical.contiguous()
            self.bytes_reduced += canonical.numel() * canonical.element_size()
            tdist.broadcast(canonical, src=self._src(), group=self.group)
            return canonical

        return _in_canonical_order(value, dims, broadcast)

    # -- before any data crosses ranks ------------------------------------------------------

    def guarded(self, fn):
        """Run ``fn`` (tracing), then agree with all ranks that it worked everywhere.

        The ranks exchange a small status -- did tracing fail, a hash of the structure, and
        the local size of every shard plate -- so that a failure, a different model or an
        empty shard on one rank makes every rank raise the same error instead of leaving the
        others blocked in an all-reduce. Every rank sees the same statuses, so every rank takes
        the same branch below and makes the same collective calls.
        """
        shard = sorted(self.shard)
        error, result, signature, local_sizes = self._traced(fn, shard)
        status = torch.tensor(
            [error is not None, zlib.crc32(signature.encode()), *local_sizes], dtype=torch.int64
        )
        statuses = [torch.zeros_like(status) for _ in range(self.world_size)]
        tdist.all_gather(statuses, status, group=self.group)
        self.bytes_reduced += status.numel() * status.element_size() * self.world_size
        sizes = {(r, p): int(s[2 + i]) for r, s in enumerate(statuses) for i, p in enumerate(shard)}
        _raise_on_empty_shards(sizes)
        self._raise_on_failures(statuses, error)
        if len({int(s[1]) for s in statuses}) > 1:
            summaries = [None] * self.world_size
            tdist.all_gather_object(summaries, signature, group=self.group)
            raise ModelStructureError(describe_mismatch(summaries, self.rank))
        if any(n == 1 for n in sizes.values()):
            for problem in _problems_in(result):
                self.canonicalise(problem)
        return result

    def _traced(self, fn, shard):
        """``(error, result, structure signature, local size of each shard plate)`` of running
        ``fn`` on this rank; a size is -1 where the plate was not traced (tracing failed)."""
        error, result, signature = None, None, ""
        local_sizes = [-1] * len(shard)
        try:
            result = fn()
            problems = _problems_in(result)
            if problems:
                signature = "\n--\n".join(structure_signature(p, self.shard) for p in problems)
                local_sizes = [
                    problems[0].plates[p].size if p in problems[0].plates else -1 for p in shard
                ]
            else:  # not traced into a problem yet (sequential enumeration traces per value)
                signature = repr(type(result))
        except Exception as exc:
            error = exc
            empty = _empty_plate(exc)
            if empty in shard:
                local_sizes[shard.index(empty)] = 0
        return error, result, signature, local_sizes

    def _raise_on_failures(self, statuses, error) -> None:
        """Where some rank failed: every rank raises. The same error everywhere (a refusal)
        keeps its own type; otherwise a :class:`ShardError` names each failed rank's error."""
        failed = [r for r, s in enumerate(statuses) if s[0]]
        if not failed:
            return
        messages = [None] * self.world_size
        tdist.all_gather_object(messages, None if error is None else repr(error), group=self.group)
        if len(failed) == self.world_size and len(set(messages)) == 1:
            raise error  # the same error on every rank (a refusal): keep its own type
        if error is not None and len(failed) == 1:
            raise ShardError(f"rank {self.rank} failed: {error}") from error
        detail = "; ".join(f"rank {r}: {messages[r]}" for r in failed)
        raise ShardError(f"sharded enumeration stopped on every rank because {detail}")

    def canonicalise(self, problem) -> None:
        """Give every term inside a shard plate that plate's dim, on every rank.

        Where every shard holds two or more items, a factor has the shard dim on all ranks or
        on none (it varies over the plate or is broadcast). A one-item shard cannot tell the
        two apart, so then every rank expands every such term: the elimination plan, and so the
        sequence of all-reduces, must be the same everywhere. (Slower: broadcast factors become
        per-item ones; runs avoid it by giving each rank at least two items.)
        """
        for term in problem.log_factors + problem.costs + problem.guide_costs:
            shard = {p: problem.plates[p].size for p in self.shard & term.ordinal}
            term.factor = expand_plates(term.factor, shard)

    def prepare(self, problem) -> None:
        """Check the shard plates exist and rescale subsampled ones to the union of ranks."""
        check_shard_plates(self.shard, problem)
        for name in sorted(self.shard):
            plate = problem.plates[name]
            if plate.full_size == plate.size:
                continue
            local = torch.tensor(float(plate.size), dtype=torch.float64)
            tdist.all_reduce(local, group=self.group)
            correction = plate.size / float(local)
            for term in problem.log_factors + problem.costs + problem.guide_costs:
                if name in term.ordinal:
                    term.scale = term.scale * correction


def _problems_in(result) -> list:
    """The traced problems a tracing function returned: one, several (one per value of a
    sequentially enumerated guide site), or none yet (model-side sequential enumeration)."""
    results = result if isinstance(result, list) else [result]
    return [r for r in results if isinstance(r, EnumProblem)]


def _raise_on_empty_shards(sizes) -> None:
    """``sizes``: ``{(rank, plate): local size}`` over all ranks; refuse a rank with none."""
    empty = sorted((r, p) for (r, p), n in sizes.items() if n == 0)
    if empty:
        raise ShardError(
            "sharded enumeration stopped on every rank because "
            + "; ".join(f"rank {r} holds no items of plate '{p}'" for r, p in empty)
            + ". Give every rank at least one item of each shard plate (e.g. fewer ranks, "
            "or a split that leaves no rank empty)."
        )


def _empty_plate(exc) -> str | None:
    """The plate whose construction raised ``exc`` because its size was 0, if that is what
    happened (Pyro refuses ``pyro.plate(name, 0)`` with a ZeroDivisionError)."""
    if not isinstance(exc, ZeroDivisionError):
        return None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "__init__" and isinstance(
            frame.f_locals.get("self"), IndepMessenger
        ):
            return frame.f_locals.get("name")
        tb = tb.tb_next
    return None


def _in_canonical_order(tensor, dims, collective):
    """Apply ``collective`` with the dims sorted by name, then restore this rank's order.

    Ranks may lay a message's dims out in different orders (a one-item shard keeps a dim that
    a larger shard broadcasts); summing element by element must still line up.
    """
    if dims is None or len(dims) < 2:
        return collective(tensor)
    order = sorted(range(len(dims)), key=lambda i: dims[i])
    inverse = sorted(range(len(dims)), key=lambda i: order[i])
    return collective(tensor.permute(order)).permute(inverse)


def structure_signature(problem, shard) -> str:
    """What must agree across ranks: sites, their dims and plates (not the shard dims)."""
    lines = []
    for kind, terms in (
        ("model", problem.log_factors),
        ("cost", problem.costs),
        ("guide", problem.guide_costs),
    ):
        for t in terms:
            sizes = sorted((d, s) for d, s in t.factor.sizes.items() if d not in shard)
            lines.append(f"{kind} {t.name} {sorted(t.ordinal)} {sizes}")
    return "\n".join(lines)


def describe_mismatch(summaries, rank) -> str:
    mine = set(summaries[rank].splitlines())
    parts = []
    for r, summary in enumerate(summaries):
        if r == rank:
            continue
        theirs = set(summary.splitlines())
        only_mine, only_theirs = sorted(mine - theirs), sorted(theirs - mine)
        if only_mine or only_theirs:
            parts.append(
                f"rank {rank} vs rank {r}: only on rank {rank}: {only_mine[:3]}; "
                f"only on rank {r}: {only_theirs[:3]}"
            )
    return (
        "ranks disagree on the model's structure (sites, plates or sizes other than the shard "
        "plates), so their messages cannot be combined: " + " | ".join(parts)
    )


def average_gradients(params, group=None) -> int:
    """Average the ``.grad`` of ``params`` over the ranks of ``group`` (in one all-reduce).

    Returns the number of bytes reduced.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        return 0
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )
    tdist.all_reduce(flat, group=group)
    flat /= tdist.get_world_size(group)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
    return flat.numel() * flat.element_size()
