"""Sharding scenarios: each names a zoo model, the plate to shard and how to slice its data.

``local_args(rank, sizes)`` gives rank ``rank`` its slice when the plate is split in ``sizes``;
``full_args()`` is the single-process oracle's input (for subsampling: the union of the ranks'
subsamples).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from tests.engine import zoo


def _bounds(rank, sizes):
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


@dataclass
class ShardCase:
    name: str
    case: zoo.Case
    plate: str
    slicer: object  # (args, lo, hi, rank) -> local args
    sizes: tuple = None  # shard sizes (None: even split)
    full: object = None  # args -> full-data args (default: unchanged)

    def split(self, world):
        n = self.num_items()
        if self.sizes is not None:
            return self.sizes
        base = [n // world] * world
        base[-1] += n - sum(base)
        return tuple(base)

    def num_items(self):
        return _NUM_ITEMS[self.name](self.case.args)

    def local_args(self, rank, world):
        lo, hi = _bounds(rank, self.split(world))
        return self.slicer(self.case.args, lo, hi, rank)

    def full_args(self):
        return self.full(self.case.args) if self.full else self.case.args


def _case(name):
    return next(c for c in zoo.CASES if c.name == name)


def _first_axis(args, lo, hi, rank):
    return tuple(a[lo:hi] for a in args)


def _hmm_axis(args, lo, hi, rank):
    ys, *rest = args
    return (ys[:, lo:hi], *[r[lo:hi] for r in rest])


SUBSAMPLES = (torch.tensor([3, 17, 5, 22]), torch.tensor([39, 0, 11]))


def _subsample_slice(args, lo, hi, rank):
    data, _ = args
    return (data, SUBSAMPLES[rank])


_NUM_ITEMS = {
    "mixture": lambda args: len(args[0]),
    "hmm_masked": lambda args: args[0].shape[1],
    "hmm_global_regime": lambda args: args[0].shape[1],
    "nested_topics": lambda args: args[0].shape[0],
    "bayesian_mixture_autodelta": lambda args: len(args[0]),
    "subsampled": lambda args: 2,
    "unequal_shards": lambda args: args[0].shape[1],
    "global_outside_plate": lambda args: len(args[0]),
    "bernoulli_hmm_one_item_shard": lambda args: args[0].shape[0],
}

SHARD_CASES = [
    ShardCase("mixture", _case("gaussian_mixture"), "data", _first_axis),
    ShardCase("hmm_masked", _case("hmm_masked"), "sequences", _hmm_axis),
    ShardCase("hmm_global_regime", _case("hmm_global_regime"), "sequences", _hmm_axis),
    ShardCase("nested_topics", _case("nested_topics"), "documents", _first_axis),
    ShardCase("bayesian_mixture_autodelta", _case("bayesian_mixture_autodelta"), "data", _first_axis),
    ShardCase("global_outside_plate", _case("global_outside_plate"), "data", _first_axis),
    ShardCase("subsampled", _case("subsampled_plate"), "data", _subsample_slice, sizes=(1, 1),
              full=lambda args: (args[0], torch.cat(SUBSAMPLES))),
    ShardCase("unequal_shards", _case("hmm_masked"), "sequences", _hmm_axis, sizes=(1, 3)),
    # nested plates, lazy emissions and a one-item shard: ranks lay dims out differently
    ShardCase("bernoulli_hmm_one_item_shard", _case("bernoulli_hmm_nested_plates"), "sequences",
              _first_axis, sizes=(1, 4)),
]


def record_run(elbo, case, args, steps=3):
    """Loss, gradients after ``loss_and_grads`` and parameters after ``steps`` SVI steps."""
    model = case.case.model
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = case.case.guide_factory(model)
    loss = elbo.loss(model, guide, *args)
    elbo.loss_and_grads(model, guide, *args)
    grads = {n: pyro.param(n).unconstrained().grad.clone() for n in pyro.get_param_store().keys()
             if pyro.param(n).unconstrained().grad is not None}
    comm = getattr(elbo, "last_comm_bytes", 0)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = case.case.guide_factory(model)
    svi = SVI(model, guide, Adam({"lr": 0.05}), loss=elbo)
    losses = [svi.step(*args) for _ in range(steps)]
    params = {n: pyro.param(n).detach().clone() for n in pyro.get_param_store().keys()}
    return {"loss": loss, "grads": grads, "svi_losses": losses, "params": params, "comm": comm}
