"""Tiny models and data for pipeline tests (fast on one CPU core).

``RegimeMixture`` has a *global* enumerated variable (the regime) outside the shard plate,
the case where averaging per-shard losses would be wrong.
"""

from __future__ import annotations

import os
import signal

import pyro
import pyro.distributions as dist
import pytorch_lightning as pl
import torch
from pyro.nn import PyroParam
from torch.distributions import constraints

from enumdist.models.base import EnumModel

ENUM = {"enumerate": "parallel"}


class RegimeMixture(EnumModel):
    """regime ~ Cat(pi); per point: assignment ~ Cat(weights[regime]); x ~ N(locs[regime, assignment], 1)."""

    shard_plate = "data"
    max_plate_nesting = 1

    def __init__(
        self,
        num_regimes: int = 2,
        num_components: int = 3,
        seed: int = 0,
        shard_plate: str = "data",
    ):
        super().__init__()
        self.shard_plate = (
            shard_plate  # the plate below is always "data": a wrong name must be caught
        )
        g = torch.Generator().manual_seed(seed)
        self.regime_probs = PyroParam(
            torch.full((num_regimes,), 1.0 / num_regimes), constraint=constraints.simplex
        )
        self.weights = PyroParam(
            torch.rand(num_regimes, num_components, generator=g) + 0.5,
            constraint=constraints.simplex,
        )
        self.locs = PyroParam(3 * torch.randn(num_regimes, num_components, generator=g))

    def num_observations(self, batch):
        return int(batch["features"].shape[0])

    def model(self, batch):
        regime = pyro.sample("regime", dist.Categorical(self.regime_probs), infer=ENUM)
        with pyro.plate("data", batch["num_total"], subsample=batch["index"], dim=-1):
            assignment = pyro.sample(
                "assignment", dist.Categorical(self.weights[regime]), infer=ENUM
            )
            pyro.sample("x", dist.Normal(self.locs[regime, assignment], 1.0), obs=batch["features"])


def toy_points(split: str, num_items: int = 20, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + {"train": 0, "valid": 1, "test": 2}[split])
    centres = torch.tensor([-3.0, 0.0, 4.0])
    features = centres[torch.randint(3, (num_items,), generator=g)] + torch.randn(
        num_items, generator=g
    )
    return {"features": features}


def toy_points_2d(split: str, num_items: int = 20, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + {"train": 0, "valid": 1, "test": 2}[split])
    centres = torch.tensor([[-3.0, 0.0], [2.0, 2.0], [3.0, -3.0]])
    features = centres[torch.randint(3, (num_items,), generator=g)] + torch.randn(
        num_items, 2, generator=g
    )
    return {"features": features}


def toy_sequences(
    split: str, num_items: int = 12, max_steps: int = 6, num_keys: int = 4, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Zero-padded 0/1 rolls ``sequences [N, T, K]`` with variable ``lengths [N]``."""
    g = torch.Generator().manual_seed(seed + {"train": 0, "valid": 1, "test": 2}[split])
    lengths = torch.randint(2, max_steps + 1, (num_items,), generator=g)
    rolls = (torch.rand(num_items, max_steps, num_keys, generator=g) < 0.3).float()
    rolls = rolls * (torch.arange(max_steps)[None, :, None] < lengths[:, None, None])
    return {"sequences": rolls, "lengths": lengths}


class KillAtStep(pl.Callback):
    """SIGKILLs its own process when step ``step + 1`` starts: the checkpoint of ``step`` is on
    disk, as after a ``kill -9`` (or a node failure) in the middle of a run."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class StopRankAtStep(pl.Callback):
    """Rank ``rank`` writes its pid to ``pid_file`` and SIGSTOPs itself when step ``step`` starts:
    a stopped (not dead) rank, which the other ranks only notice by their collectives' timeout."""

    def __init__(self, rank: int, step: int, pid_file: str):
        self.rank, self.step, self.pid_file = rank, step, pid_file

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            with open(self.pid_file, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)
