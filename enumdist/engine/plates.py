"""Plate back ends: how a product over a plate is taken, chosen in one place for every entry point.

A plate is a product of factors -- a sum in log space. The contraction (``contract.py``) never
asks which back end it runs on; it calls the interface of :class:`LocalPlates`:

* ``guarded(fn)`` runs the tracing function (the sharded back end agrees with the other ranks
  that tracing worked everywhere before any message crosses ranks);
* ``prepare(problem)`` checks the problem once it is traced (shard plates exist, subsampling);
* ``plate_sum`` takes a product over plates; ``sum_terms`` adds the terms inside the sharded
  plates to those outside them; ``touches_shard`` says which are which;
* ``broadcast_decision`` makes a value chosen while decoding agree on every rank;
* ``average_gradients`` turns the gradients of a sharded backward pass into full-data ones.

Three back ends, and :func:`plates_for` picks one for a call:

==================  ==========================================================================
back end            when
==================  ==========================================================================
``LOCAL``           no ``shard_plates``
LocalShardCheck     ``shard_plates`` but one process: the data is all here; only check the names
ShardedPlates       ``shard_plates`` and several ranks (``enumdist.engine.sharding``)
==================  ==========================================================================

``EnumELBO`` (its losses, ``compute_marginals``, ``sample_posterior``, sequential enumeration)
and ``infer_discrete`` all get their back end from :func:`plates_for`, so every entry point is
sharded the same way.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist

from enumdist.engine.errors import EnumerationError


class LocalPlates:
    """Products over plates on a single process."""

    #: bytes sent to other ranks so far (messages, statuses); always 0 here
    bytes_reduced = 0
    #: whether results combine several ranks (then gradients need averaging)
    sharded = False

    def prepare(self, problem) -> None:
        """Hook run once the problem is traced (the sharded back end checks ranks here)."""

    def guarded(self, fn):
        """Run the tracing function ``fn`` (the sharded back end syncs failures across ranks)."""
        return fn()

    def plate_sum(
        self, x: torch.Tensor, positions, absent_count: int, plates, out_dims=None
    ) -> torch.Tensor:
        """Sum over the plate dims at ``positions`` (a product in log space); ``out_dims`` name
        the result's dims (the sharded back end needs them to line ranks up)."""
        out = x.sum(dim=positions) if positions else x
        return out * absent_count if absent_count != 1 else out

    def sum_terms(self, local: torch.Tensor, sharded: torch.Tensor) -> torch.Tensor:
        """Total of terms inside (``sharded``) and outside (``local``) any sharded plate."""
        return local + sharded

    def touches_shard(self, plates) -> bool:
        return False

    def broadcast_decision(self, value: torch.Tensor, dims) -> torch.Tensor:
        return value

    def average_gradients(self, params) -> int:
        """Average the parameters' ``.grad`` over ranks (after a sharded backward pass, which
        sums over ranks); returns the bytes sent. Nothing to do on one process."""
        return 0


LOCAL = LocalPlates()


def check_shard_plates(shard_plates, problem) -> None:
    """Every name in ``shard_plates`` must be a plate of the traced ``problem``."""
    missing = sorted(set(shard_plates) - set(problem.plates))
    if missing:
        raise EnumerationError(
            f"shard_plates names {missing}, but the model has no such plate (its plates: "
            f"{sorted(problem.plates)}); name a plate the data is split along."
        )


class LocalShardCheck(LocalPlates):
    """Single-process stand-in for sharded plates: the data is all here, but the plates named
    in ``shard_plates`` must still exist (a typo must not pass silently on one process and
    fail only on many)."""

    def __init__(self, shard_plates):
        self.shard_plates = tuple(shard_plates)

    def prepare(self, problem) -> None:
        check_shard_plates(self.shard_plates, problem)


def single_process(group=None) -> bool:
    """True when ``torch.distributed`` is not running, or runs a single rank."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return True
    return tdist.get_world_size(group) == 1


def plates_for(shard_plates=(), process_group=None, *, adjoint: str = "sum") -> LocalPlates:
    """The plate back end for one call of an entry point (a fresh one: it counts its bytes).

    ``adjoint`` says what the backward pass of a sharded all-reduce returns (see
    :mod:`enumdist.engine.sharding`): ``"sum"`` (the sum of every rank's upstream gradient;
    with gradients averaged over ranks afterwards, as DDP does, training is exact) or
    ``"own"`` (this rank's own upstream gradient: the exact derivative of the common result
    with respect to this rank's inputs, which is what ``compute_marginals`` differentiates).
    """
    if not shard_plates:
        return LOCAL
    if single_process(process_group):
        return LocalShardCheck(shard_plates)
    from enumdist.engine.sharding import ShardedPlates

    return ShardedPlates(shard_plates, process_group, adjoint=adjoint)
