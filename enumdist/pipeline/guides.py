"""Guides built from config for zoo models that do not define their own ``guide``.

Each factory takes the zoo model and returns a module ``guide(batch)``. Autoguides see the
model with enumerated and observed sites hidden, so they cover exactly the continuous
(non-enumerated) latents. Their parameters are created lazily on the first call; the
LightningModule calls the guide once in ``setup()`` so that they exist before DDP wraps it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pyro
import pyro.infer.autoguide as autoguide
from pyro.nn import PyroModule

from enumdist.models.base import EnumModel


class EmptyGuide(PyroModule):
    """Guide of a model whose latents are all enumerated: samples nothing."""

    def forward(self, batch) -> None:
        return None


class ModelGuide(PyroModule):
    """Wraps a zoo model's own ``guide`` method (its parameters stay under ``model.``)."""

    def __init__(self, model: EnumModel):
        super().__init__()
        self._model = (model,)  # a tuple, so the model is not registered twice

    def forward(self, batch) -> None:
        return self._model[0].guide(batch)


def auto(model: EnumModel, kind: str = "AutoDelta", **kwargs) -> PyroModule:
    """``pyro.infer.autoguide.<kind>`` over the model's ``global_latents``.

    Follows the zoo's convention (:mod:`enumdist.models`): the autoguide traces
    ``model.guide_model`` (the model with enumerated sites hidden) and starts from
    ``model.init_loc_fn`` when the model has one. A model with its own ``guide`` keeps it; a
    model without ``global_latents`` (all latents enumerated) gets :class:`EmptyGuide`.
    """
    if model.guide is not None:
        return ModelGuide(model)
    if not model.global_latents:
        return EmptyGuide()
    if not hasattr(autoguide, kind):
        raise ValueError(f"guide.kind={kind!r} is not a pyro.infer.autoguide class")
    if model.init_loc_fn is not None:
        kwargs.setdefault("init_loc_fn", model.init_loc_fn)
    data_plate = None
    if "create_plates" in inspect.signature(getattr(autoguide, kind)).parameters:
        data_plate = kwargs.setdefault("create_plates", DataPlate(model.shard_plate))
    guide = getattr(autoguide, kind)(model.guide_model, **kwargs)
    if isinstance(data_plate, DataPlate):
        data_plate.guide = guide
    return PicklableAutoGuide(guide.model, guide)  # guide.model: wrapped by its init strategy


class DataPlate:
    """An autoguide's ``create_plates``: the data plate over the *batch's own* items.

    Left to itself an autoguide opens the model's subsampled plate with a fresh random
    subsample of the same size, so a per-item latent (a document's topic weights) would be
    drawn for other items than the model's ``batch["index"]``. This plate uses the batch's
    ``index`` and ``num_total``, at the dim the model gives it (read from the guide's prototype).
    """

    def __init__(self, name: str):
        self.name = name
        self.guide = None  # the autoguide, set right after it is built

    def __call__(self, batch) -> list:
        frame = self.guide._prototype_frames.get(self.name)
        if frame is None or not isinstance(batch, dict) or "index" not in batch:
            return []
        return [
            pyro.plate(self.name, int(batch["num_total"]), subsample=batch["index"], dim=frame.dim)
        ]


class PicklableAutoGuide(PyroModule):
    """An autoguide that survives pickling (``ddp_spawn``, submitit).

    Pyro's ``AutoGuide.__getstate__`` drops the guide's model reference (and does so on the
    original object too), so an autoguide pickled before its parameters exist cannot set them up
    afterwards. This wrapper keeps the guide's model (as the autoguide wrapped it, e.g. in its
    ``init_loc_fn``) and gives it back before each call.
    """

    def __init__(self, model_fn: Callable, guide: autoguide.AutoGuide):
        super().__init__()
        self.auto = guide
        self.model_fn = model_fn

    def forward(self, batch):
        if self.auto._model is None:
            self.auto._model = (self.model_fn,)
        return self.auto(batch)


def empty(model: EnumModel) -> PyroModule:
    """No guide (all latents enumerated), or the model's own guide if it has one."""
    if model.guide is not None:
        return ModelGuide(model)
    return EmptyGuide()


GuideFactory = Callable[[EnumModel], PyroModule]
