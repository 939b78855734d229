"""The LightningModule: a zoo model, its guide and an enumeration ELBO.

The objective is the ELBO loss of the *full* training split divided by a constant, the number of
observations in that split (computed once in ``setup``), so that learning rates and gradient
clipping do not depend on the data size. With ``EnumELBO(shard_plates=[model.shard_plate])``
each rank feeds its own shard and gets the exact full-data loss; autograd through the engine's
all-reduce sums gradients over ranks and DDP's averaging then leaves exactly the single-process
full-data gradient. (With ``pyro.infer.TraceEnum_ELBO``, an oracle, use one process.)

Pyro state: parameters live on the modules (``pyro.settings.module_local_params``), never in the
global param store, so checkpoints, optimisers and DDP see all of them. Settings are applied by
:func:`~enumdist.pipeline.pyro_settings.apply_pyro_settings`, never on import: by the training
entry point before it builds the model, and in ``setup()`` because that also runs in processes
started by ``ddp_spawn``.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from pyro import poutine

import enumdist.process_group  # noqa: F401 - imports torch._dynamo before any process group (no SIGABRT at exit)
from enumdist.models.base import EnumModel
from enumdist.pipeline.fold_in import DEFAULTS as FOLD_IN_DEFAULTS
from enumdist.pipeline.fold_in import check_fold_in, fold_in
from enumdist.pipeline.guides import GuideFactory, empty
from enumdist.pipeline.pyro_settings import apply_pyro_settings
from enumdist.pipeline.state_dicts import CheckpointMismatchError, check_state_dict


def build_elbo(elbo_factory: Callable[..., Any], model: EnumModel) -> Any:
    """``elbo_factory(max_plate_nesting=..., [shard_plates=[model.shard_plate]])``.

    ``shard_plates`` is passed only to ELBOs that accept it (``enumdist.EnumELBO``) and only when
    several ranks run (``torch.distributed`` initialised with world size > 1).
    """
    target = getattr(elbo_factory, "func", elbo_factory)
    kwargs: dict[str, Any] = {"max_plate_nesting": model.max_plate_nesting}
    distributed = (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )
    if distributed and "shard_plates" in inspect.signature(target).parameters:
        kwargs["shard_plates"] = [model.shard_plate]
    elif distributed:
        warnings.warn(
            f"elbo: {getattr(target, '__name__', target)} is not sharded: each rank optimises its "
            "own shard's estimate; exact only without enumerated variables outside the "
            "shard plate (use elbo=enum)",
            stacklevel=2,
        )
    return elbo_factory(**kwargs)


def plates_of(model: EnumModel, batch: dict) -> set[str]:
    """Names of all plates the model opens on ``batch``."""
    with poutine.block():
        trace = poutine.trace(model.model).get_trace(batch)
    return {
        frame.name for site in trace.nodes.values() for frame in site.get("cond_indep_stack", ())
    }


def training_probe(datamodule: pl.LightningDataModule, model: EnumModel) -> tuple[dict, int]:
    """(a batch to trace the model and build the guide on, observations in the training split).

    In-memory data give their full split; streaming data (too large for that) a few items and a
    chunked count (:class:`~enumdist.pipeline.streaming.StreamingDataModule`).
    """
    if hasattr(datamodule, "probe_batch"):
        return (
            datamodule.probe_batch("train"),
            datamodule.count_observations(model.num_observations, "train"),
        )
    full = datamodule.full_batch("train")
    return full, int(model.num_observations(full))


class EnumModule(pl.LightningModule):
    """Trains ``model`` (a zoo :class:`~enumdist.models.base.EnumModel`) by an enumeration ELBO.

    Args:
        model: the zoo model; its parameters end up under ``model.`` in the ``state_dict``.
        guide: factory ``model -> guide module``; parameters under ``guide.``.
        elbo: factory for the ELBO (``TraceEnum_ELBO`` kwargs), called in ``setup()``.
        optimizer: factory ``params -> torch.optim.Optimizer``.
        scheduler: optional factory ``optimizer -> LRScheduler``; stepped every ``scheduler_interval``.
        validate: ``pyro.enable_validation``.
        fold_in: ``{"steps": int, "lr": float}``: how held-out items' per-item guide latents are
            fitted before evaluation (:mod:`enumdist.pipeline.fold_in`); unused by guides
            without per-item latents.
        hparams: plain-container config stored in checkpoints (must be weights-only loadable).
    """

    def __init__(
        self,
        model: EnumModel,
        elbo: Callable[..., Any],
        optimizer: Callable[..., torch.optim.Optimizer],
        guide: GuideFactory = empty,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "step",
        validate: bool = True,
        hparams: dict | None = None,
        fold_in: dict | None = None,
    ):
        super().__init__()
        if not isinstance(model, EnumModel):
            raise TypeError(
                f"model: expected an enumdist.models.base.EnumModel, got {type(model).__name__}"
            )
        self.model = model
        self.guide = guide(model)
        self.guide_factory = guide
        self.fold_in = {**FOLD_IN_DEFAULTS, **(fold_in or {})}
        self.local_latents: list[str] = []  # the guide's per-item latents (set in setup)
        self.elbo_factory, self.optimizer_factory = elbo, optimizer
        self.scheduler_factory, self.scheduler_interval = scheduler, scheduler_interval
        self.validate = validate
        self.guide_init_seed = int((hparams or {}).get("seed", 0))
        self.elbo = None
        self.train_observations: int | None = None
        self.last_observations = 0  # observations in the last global training batch (all ranks)
        self.save_hyperparameters(hparams or {}, logger=False)

    # -- set-up -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        apply_pyro_settings(self.validate)
        self.elbo = build_elbo(self.elbo_factory, self.model)
        full, self.train_observations = training_probe(self.trainer.datamodule, self.model)
        plates = plates_of(self.model, full)
        if self.model.shard_plate not in plates:
            raise ValueError(
                f"model.shard_plate={self.model.shard_plate!r} ({type(self.model).__name__}) is not a plate "
                f"of the model; its plates are {sorted(plates)}. Set shard_plate to the data plate."
            )
        if self.train_observations <= 0:
            raise ValueError("data: the training split holds no observations")
        # create lazily-initialised (autoguide) parameters before DDP wraps the module, from a
        # fixed seed so that they do not depend on the process's RNG state (rank, spawn, resume)
        with torch.no_grad(), poutine.block(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.guide_init_seed)
            self.guide(full)
        self.local_latents = check_fold_in(self.model, self.guide, full)

    # -- steps ------------------------------------------------------------------------------
    def _loss(self, batch: dict, guide=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(full-data loss estimate, loss per observation of the split the batch comes from).

        Differentiable while training; evaluation (under ``no_grad``) uses ``elbo.loss``.
        """
        guide = guide or self.guide
        if torch.is_grad_enabled():
            loss = self.elbo.differentiable_loss(self.model.model, guide, batch)
        else:
            loss = torch.as_tensor(
                self.elbo.loss(self.model.model, guide, batch), dtype=torch.float64
            )
        counts = torch.tensor(
            [float(self.model.num_observations(batch)), float(len(batch["index"]))],
            dtype=torch.float64,
            device=loss.device,
        )
        counts = (
            self.trainer.strategy.reduce(counts, reduce_op="sum")
            if self.trainer.world_size > 1
            else counts
        )
        observations, items = counts.tolist()
        self.last_observations = int(observations)
        # estimated observations in the whole split = observations per item * items in the split
        per_observation = loss.detach() * items / (observations * batch["num_total"])
        return loss, per_observation

    def _log_loss(self, split: str, per_observation: torch.Tensor, batch: dict, prog_bar: bool):
        self.log(
            f"{split}/loss_per_obs",
            per_observation,
            prog_bar=prog_bar,
            rank_zero_only=True,
            batch_size=len(batch["index"]),
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, per_observation = self._loss(batch)
        self._log_loss("train", per_observation, batch, prog_bar=True)
        return loss / self.train_observations

    def held_out_guide(self, batch: dict):
        """The trained guide, or -- when it has per-item latents, fitted to the training items --
        a fresh guide fitted to ``batch`` (fold-in; the model's parameters stay frozen)."""
        if not self.local_latents:
            return self.guide
        return fold_in(self.model, self.guide_factory, self.elbo, batch, **self.fold_in)

    def _evaluate(self, split: str, batch: dict, prog_bar: bool) -> None:
        _, per_observation = self._loss(batch, self.held_out_guide(batch))
        self._log_loss(split, per_observation, batch, prog_bar)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("valid", batch, prog_bar=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("test", batch, prog_bar=False)

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    # -- checkpoints ------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another model with a message naming what differs."""
        saved_target = (checkpoint.get("hyper_parameters") or {}).get("model", {}).get("_target_")
        target = (self.hparams.get("model") or {}).get("_target_")
        if saved_target and target and saved_target != target:
            raise CheckpointMismatchError(
                f"ckpt_path: the checkpoint holds model._target_={saved_target!r}, "
                f"but this run's model._target_ is {target!r}"
            )
        check_state_dict(
            self.state_dict(),
            checkpoint["state_dict"],
            subject="ckpt_path: the checkpoint is from a different model",
            fix="Resume from a checkpoint of this experiment, or set the model and guide config "
            "to the ones it was trained with.",
        )
