"""The guide a split is decoded with: the trained one, or, for held-out items of a guide with
per-item latents, a guide folded in to that split first.

A guide latent inside the data plate (the :class:`~enumdist.models.TopicModel`'s per-document
topic weights) was fitted to the training items; replaying it on another split would pair items
with other items' latents. So a held-out split (``valid``, ``test``) gets a fresh guide fitted to
*its* items with the model frozen, by the same fold-in held-out evaluation uses in training
(:func:`enumdist.pipeline.fold_in.fold_in`, with the run's ``fold_in`` settings), and the
decoder then replays that guide as it replays a trained one.

The fold-in runs once, on the whole split (``num_total`` = the split's items, so the folded-in
guide holds one latent per item, found by each decode batch's ``index``), with
``enumdist.EnumELBO`` (equal to Pyro's ``TraceEnum_ELBO``; the run's saved ``elbo`` config is not
instantiated, see :mod:`enumdist.pipeline.targets`) and under a fixed seed, so that a resumed
decode pairs its remaining chunks with the same latents as its finished ones. Under
torch.distributed every rank folds in the whole split alone (no collectives): the ranks get the
same guide.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import enumdist
from enumdist.decoding import checkpoint as ckpt
from enumdist.models.base import EnumModel
from enumdist.pipeline.fold_in import DEFAULTS, check_fold_in, fold_in, guide_latents


def decoding_guide(
    cfg: DictConfig,
    model: EnumModel,
    items_of: Callable[[range], dict],
    num_items: int,
    state_dict: dict[str, torch.Tensor],
    checkpoint: Path,
    split: str,
    seed: int = 0,
):
    """The guide to decode ``split`` with (``None``: no latents to cover). ``items_of(range)`` is
    the batch of those items of the split, which holds ``num_items``.

    The trained guide (:func:`~enumdist.decoding.checkpoint.build_guide`) for the training split
    and for guides without per-item latents; else a fresh guide folded in to the whole split
    (the trained one's weights belong to the training items only). Where fold-in is impossible
    (per-item and global guide latents together, or a guide without parameters of its own) this
    raises, naming the sites and the fix.
    """
    probe = items_of(range(min(num_items, 2)))  # the guide's sites, not its values
    if split != "train" and cfg.get("guide") is not None:
        fresh = instantiate(cfg.guide)(model)
        local, _ = guide_latents(model, fresh, probe)
        if local:
            try:
                check_fold_in(model, fresh, probe)
                return _fold_in(cfg, model, items_of(range(num_items)), seed)
            except ValueError as error:
                raise ValueError(
                    f"decode split={split!r}: the guide's latents {local}, per item of plate "
                    f"{model.shard_plate!r}, cannot be folded in to the {split!r} items: "
                    f"{str(error).rstrip('.')}. Or decode split=train, whose items the trained "
                    "guide holds."
                ) from error
    return ckpt.build_guide(cfg, model, probe, state_dict, checkpoint)


def _fold_in(cfg: DictConfig, model: EnumModel, split_batch: dict, seed: int):
    given = cfg.get("fold_in")
    settings = {**DEFAULTS, **(OmegaConf.to_container(given, resolve=True) if given else {})}
    elbo = enumdist.EnumELBO(max_plate_nesting=model.max_plate_nesting)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fold_in(model, instantiate(cfg.guide), elbo, split_batch, **settings).eval()
