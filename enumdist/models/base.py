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

Optional: ``global_latents`` (non-enumerated latents an autoguide covers) with ``guide_model``
(the model with enumerated sites hidden) and ``init_loc_fn``; ``transition_matrices()`` for the
decoding stage's transition pictures. See docs/own_model.md.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.nn import PyroModule


class EnumModel(PyroModule):
    """Base class of zoo models; see the module docstring for the contract."""

    #: name of the plate the data (and DDP ranks) split
    shard_plate: str = "data"
    #: how many plate dims the model uses (``EnumELBO(max_plate_nesting=...)``)
    max_plate_nesting: int = 1

    def model(self, batch: dict[str, torch.Tensor]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define model(batch)")

    guide = None

    def num_observations(self, batch: dict[str, torch.Tensor]) -> int:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must define num_observations(batch)")

    def state_sites(self, batch: dict[str, torch.Tensor]) -> dict[str, list[str]]:
        """``{state: [site, ...]}`` to decode; by default every enumerated site is its own state
        (found by tracing ``model(batch)`` once)."""
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(self.model).get_trace(batch)
        return {name: [name] for name, site in trace.nodes.items()
                if site["type"] == "sample" and not site["is_observed"]
                and site["infer"].get("enumerate") is not None}

    def forward(self, batch: dict[str, torch.Tensor]) -> None:
        return self.model(batch)
