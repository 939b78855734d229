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
"""

from __future__ import annotations

import torch
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

    def forward(self, batch: dict[str, torch.Tensor]) -> None:
        return self.model(batch)
