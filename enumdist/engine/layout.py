"""Back from named dims to Pyro's layout (plate dims at their numbered positions)."""

from __future__ import annotations

import torch


def to_pyro_layout(tensor: torch.Tensor, dims, plates: dict, trailing: int = 0) -> torch.Tensor:
    """Place a tensor named by plate ``dims`` (+ ``trailing`` unnamed dims) in Pyro's layout.

    The result has the plates at their ``pyro.plate(dim=...)`` positions, singleton dims
    between them, and the trailing dims (e.g. an event or a support dim) on the right.
    """
    if not dims:
        return tensor
    dims = tuple(dims)
    order = sorted(dims, key=lambda p: plates[p].dim)
    perm = [dims.index(p) for p in order] + list(range(len(dims), len(dims) + trailing))
    tail = tuple(tensor.shape[len(dims) :])
    depth = -plates[order[0]].dim
    shape = [1] * depth
    for p in order:
        shape[depth + plates[p].dim] = plates[p].size
    return tensor.permute(perm).reshape(tuple(shape) + tail)
