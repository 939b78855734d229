"""The contract between the model zoo and the training / decoding pipeline.

A zoo model is a :class:`pyro.nn.PyroModule` whose parameters (``PyroParam`` / ``nn.Parameter``)
live on the module, so that Lightning, DDP, optimisers and checkpoints see them. It exposes:

``model(batch)``
    A plain Pyro model with enumerated discrete sites. ``batch`` is a dict of tensors made by the
    DataModule. The data plate named :attr:`shard_plate` is declared as
    ``pyro.plate(shard_plate, batch["num_total"], subsample=batch["index"], dim=...)`` where
    ``batch["index"]`` are the items' positions in the full split and ``batch["num_total"]`` the
    split's size; so the same code runs on full data, on a minibatch and on a rank's shard
    (the engine rescales sharded subsamples to the union over ranks).

``guide(batch)``
    Optional; ``None`` (the default) means the pipeline builds the guide from config
    (``AutoDelta`` / ``AutoNormal`` over the non-enumerated latents, or an empty guide when the
    model has none).

``num_observations(batch)``
    How many observed values the batch holds (notes, tokens, data points); the pipeline reports
    loss per observation.

``state_sites(batch)``
    What the decoding stage writes: ``{state name: [site, ...]}``, the enumerated sites that
    make up each decoded state, in position order (an HMM's ``x_0, x_1, ...``). The default
    is every enumerated site on its own. Decoded values are gathered per item into one column per
    state, so each site's value must hold one value (or one row of values) per item.

Every other attribute the pipeline or the decoding stage reads is declared on
:class:`EnumModel` with a default that fits a model without it (no ``hasattr`` probing
elsewhere): ``global_latents``, ``decodable``, ``guide_model``, ``init_loc_fn``, ``create_parameters``,
``validate_items``, ``transition_matrices`` / ``transition_conditions`` and ``decoded_figures``.
See docs/own_model.md.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.nn import PyroModule


def is_enumerated_or_observed(msg: dict) -> bool:
    """A sample site an autoguide must not cover: observed, or marked for enumeration."""
    return msg["type"] == "sample" and (
        msg["is_observed"] or msg["infer"].get("enumerate") is not None
    )


class EnumModel(PyroModule):
    """Base class of zoo models; see the module docstring for the contract."""

    #: name of the plate the data (and DDP ranks) split
    shard_plate: str = "data"
    #: how many plate dims the model uses (``EnumELBO(max_plate_nesting=...)``)
    max_plate_nesting: int = 1

    def model(self, batch: dict[str, torch.Tensor]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define model(batch)")

    #: the model's own ``guide(batch)`` method; ``None``: the pipeline builds one from config
    guide = None
    #: names of the non-enumerated latent sites an autoguide covers; ``()``: all latents are
    #: enumerated, so the model needs no guide (:func:`enumdist.pipeline.guides.auto`)
    global_latents: tuple[str, ...] = ()
    #: names of the model's hidden chains (HMMs: site of chain ``c`` at step ``t`` is
    #: ``f"{c}_{t}"``); ``()`` for models without chains
    chains: tuple[str, ...] = ()
    #: ``init_loc_fn(site)`` an autoguide starts from; ``None``: the autoguide's own default
    init_loc_fn = None
    #: whether the decoding stage applies (it decodes enumerated sites); ``False`` for models
    #: that sum their chain out inside one factor (``decode.enabled=true`` is then refused)
    decodable: bool = True

    def guide_model(self, batch: dict[str, torch.Tensor]) -> None:
        """What an autoguide traces: :meth:`model` with enumerated and observed sites hidden."""
        return poutine.block(self.model, hide_fn=is_enumerated_or_observed)(batch)

    def create_parameters(self, weights: dict[str, torch.Tensor]) -> None:
        """Create parameters that :meth:`model` makes on its first call, shaped like ``weights``
        (a checkpoint's ``model.*`` entries), before they are loaded; nothing by default."""

    def num_observations(self, batch: dict[str, torch.Tensor]) -> int:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must define num_observations(batch)")

    def state_sites(self, batch: dict[str, torch.Tensor]) -> dict[str, list[str]]:
        """``{state: [site, ...]}`` to decode; by default every enumerated site is its own state
        (found by tracing ``model(batch)`` once)."""
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(self.model).get_trace(batch)
        return {
            name: [name]
            for name, site in trace.nodes.items()
            if site["type"] == "sample"
            and not site["is_observed"]
            and site["infer"].get("enumerate") is not None
        }

    def validate_items(self, batch: dict[str, torch.Tensor], where: str) -> None:
        """Raise a clear error (naming ``where`` and the item) for malformed items before the
        decoding stage decodes ``batch``; nothing to check by default."""

    def transition_matrices(self) -> dict[str, torch.Tensor]:
        """Learned transition matrices for the decoding stage's pictures, chain name ->
        ``[..., D, D]``; ``{}`` (the default) draws none."""
        return {}

    def transition_conditions(self) -> dict[str, tuple[str, ...]]:
        """Chain name -> names of the leading dims of its transition matrix (e.g.
        ``("x_{t-2}",)``); chains with plain ``[D, D]`` transitions need no entry."""
        return {}

    def decoded_figures(self, table: dict, first: dict, title: str) -> dict:
        """The model's own pictures of its decoded states, ``{output name: figure}``, drawn from
        the split's ``table`` and the first decoded row ``first``; the names must be those the
        decoding stage announced for a model with :meth:`transition_matrices`. None by default."""
        return {}

    def forward(self, batch: dict[str, torch.Tensor]) -> None:
        return self.model(batch)
