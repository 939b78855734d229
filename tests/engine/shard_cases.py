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
    oracle: object = None  # a zoo.Case Pyro computes the same numbers with (default: case)

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
    "score_function_guide": lambda args: len(args[0]),
}

SHARD_CASES = [
    ShardCase("mixture", _case("gaussian_mixture"), "data", _first_axis),
    ShardCase("hmm_masked", _case("hmm_masked"), "sequences", _hmm_axis),
    ShardCase("hmm_global_regime", _case("hmm_global_regime"), "sequences", _hmm_axis),
    ShardCase("nested_topics", _case("nested_topics"), "documents", _first_axis),
    ShardCase(
        "bayesian_mixture_autodelta", _case("bayesian_mixture_autodelta"), "data", _first_axis
    ),
    ShardCase("global_outside_plate", _case("global_outside_plate"), "data", _first_axis),
    ShardCase(
        "subsampled",
        _case("subsampled_plate"),
        "data",
        _subsample_slice,
        sizes=(1, 1),
        full=lambda args: (args[0], torch.cat(SUBSAMPLES)),
    ),
    ShardCase("unequal_shards", _case("hmm_masked"), "sequences", _hmm_axis, sizes=(1, 3)),
    # nested plates, lazy emissions and a one-item shard: ranks lay dims out differently
    ShardCase(
        "bernoulli_hmm_one_item_shard",
        _case("bernoulli_hmm_nested_plates"),
        "sequences",
        _first_axis,
        sizes=(1, 4),
    ),
    # a global the guide samples without reparameterisation: DiCE score-function weights
    ShardCase("score_function_guide", _case("score_function_guide"), "data", _first_axis),
]


def record_run(elbo, case, args, steps=3, model=None):
    """Loss, differentiable loss, gradients after ``loss_and_grads`` and parameters after
    ``steps`` SVI steps."""
    model = model or case.case.model
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = case.case.guide_factory(model)
    loss = elbo.loss(model, guide, *args)
    differentiable = float(elbo.differentiable_loss(model, guide, *args).detach())
    elbo.loss_and_grads(model, guide, *args)
    grads = {
        n: pyro.param(n).unconstrained().grad.clone()
        for n in pyro.get_param_store()
        if pyro.param(n).unconstrained().grad is not None
    }
    comm = getattr(elbo, "last_comm_bytes", 0)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = case.case.guide_factory(model)
    svi = SVI(model, guide, Adam({"lr": 0.05}), loss=elbo)
    losses = [svi.step(*args) for _ in range(steps)]
    params = {n: pyro.param(n).detach().clone() for n in pyro.get_param_store()}
    return {
        "loss": loss,
        "differentiable_loss": differentiable,
        "grads": grads,
        "svi_losses": losses,
        "params": params,
        "comm": comm,
    }


# --- every sharded entry point: 12 points split 6/6, a global enumerated variable --------------

import pyro.distributions as dist  # noqa: E402
from pyro.distributions import constraints  # noqa: E402
from pyro.infer import config_enumerate  # noqa: E402
from pyro.ops.indexing import Vindex  # noqa: E402

ENTRY_DATA = torch.cat([zoo._data(8, seed=21) * 1.5 - 1.0, zoo._data(4, seed=22) + 2.5])
NUM_DRAWS = 4000  # posterior draws, vectorised over an outer plate


def entry_slice(rank, world):
    return ENTRY_DATA.chunk(world)[rank]


def global_and_local(data):
    """``g`` global, ``z`` per point, both model-enumerated: returns ``(g, z)``."""
    g_probs = pyro.param("g_probs", zoo._init(2), constraint=constraints.simplex)
    z_probs = pyro.param("z_probs", zoo._init(2, 3), constraint=constraints.simplex)
    locs = pyro.param("locs_gz", zoo._data(2, 3, seed=3))
    g = pyro.sample("g", dist.Categorical(g_probs), infer=zoo.ENUM)
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(Vindex(z_probs)[g]), infer=zoo.ENUM)
        pyro.sample("x", dist.Normal(Vindex(locs)[g, z], 1.0), obs=data)
    return g, z


def many_draws(data, num_draws=NUM_DRAWS):
    """``num_draws`` independent copies of :func:`global_and_local` (an outer plate)."""
    with pyro.plate("draws", num_draws, dim=-2):
        return global_and_local(data)


def sequential_global(data):
    """:func:`global_and_local` with ``g`` enumerated one value at a time (model side)."""
    g_probs = pyro.param("g_probs", zoo._init(2), constraint=constraints.simplex)
    z_probs = pyro.param("z_probs", zoo._init(2, 3), constraint=constraints.simplex)
    locs = pyro.param("locs_gz", zoo._data(2, 3, seed=3))
    g = pyro.sample("g", dist.Categorical(g_probs), infer={"enumerate": "sequential"})
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(z_probs[g]), infer=zoo.ENUM)
        pyro.sample("x", dist.Normal(locs[g][z], 1.0), obs=data)


def guide_side_global(data):
    """The global ``r`` is enumerated by the guide (DiCE path), ``z`` by the model."""
    r_probs = pyro.param("r_probs", zoo._init(2), constraint=constraints.simplex)
    z_probs = pyro.param("z_probs", zoo._init(2, 3), constraint=constraints.simplex)
    locs = pyro.param("locs_rz", zoo._data(2, 3, seed=5))
    r = pyro.sample("r", dist.Categorical(r_probs))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(Vindex(z_probs)[r]), infer=zoo.ENUM)
        pyro.sample("x", dist.Normal(Vindex(locs)[r, z], 1.0), obs=data)


@config_enumerate
def guide_side_global_guide(data):
    q = pyro.param(
        "q_r", torch.tensor([0.3, 0.7], dtype=torch.float64), constraint=constraints.simplex
    )
    pyro.sample("r", dist.Categorical(q))


def guide_side_sequential_guide(data):
    """The guide enumerates the global ``r`` one value at a time (a model run per value)."""
    q = pyro.param(
        "q_r", torch.tensor([0.3, 0.7], dtype=torch.float64), constraint=constraints.simplex
    )
    pyro.sample("r", dist.Categorical(q), infer={"enumerate": "sequential"})


def _entry_case(name, model, guide=None, oracle=None):
    guide_factory = (lambda m: guide) if guide else (lambda m: zoo.empty_guide)
    case = zoo.Case(name, model, (ENTRY_DATA,), 1, guide_factory, guide is None)
    return ShardCase(
        name,
        case,
        "data",
        _first_axis,
        oracle=oracle and zoo.Case(name, oracle, (ENTRY_DATA,), 1, guide_factory),
    )


_NUM_ITEMS.update(
    {
        name: (lambda args: len(args[0]))
        for name in (
            "entry_model_side",
            "entry_guide_side",
            "entry_guide_sequential",
            "entry_sequential",
        )
    }
)
SHARD_CASES += [
    _entry_case("entry_model_side", global_and_local),
    _entry_case("entry_guide_side", guide_side_global, guide_side_global_guide),
    _entry_case("entry_guide_sequential", guide_side_global, guide_side_sequential_guide),
    # model-side sequential enumeration, sharded; Pyro's oracle enumerates g in parallel
    _entry_case("entry_sequential", sequential_global, oracle=global_and_local),
]
