"""The decoding tape: what the forward contraction records for the backward choice.

``contract(..., tape=[])`` appends one record per eliminated variable (or fused chain), in
elimination order; ``contract.backtrack`` walks them last first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from enumdist.engine.steps import ChainStep, SumStep


@dataclass(frozen=True)
class SumRecord:
    """The product tensor a :class:`SumStep` eliminated its variable from (over ``all_dims``)."""

    step: SumStep
    product: torch.Tensor


@dataclass(frozen=True)
class ChainRecord:
    """A fused chain: ``memo`` is what the semiring's chain kernel kept for ``chain_states``
    (its back-pointers, or its stacked inputs); its ``N`` rows flatten ``plate_shape``."""

    step: ChainStep
    memo: Any
    plate_shape: tuple[int, ...]
