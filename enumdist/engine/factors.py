"""Named factors: a log-space tensor whose every dimension is named by a variable or a plate.

Pyro lays enumerated variables out on numbered tensor dimensions and recycles those numbers under
``pyro.markov``. The elimination must not care: a :class:`Factor` names each dimension by the
*identity* of what it indexes (an enumerated site's name, or a plate's name), and carries no
singleton dimensions. Everything downstream of the trace stage speaks only in factors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from enumdist.engine.errors import SiteShapeError


@dataclass(frozen=True)
class Factor:
    """A log-space tensor with one name per dimension (``tensor.dim() == len(dims)``)."""

    tensor: torch.Tensor
    dims: tuple[str, ...]

    def __post_init__(self):
        assert self.tensor.dim() == len(self.dims), (self.tensor.shape, self.dims)

    @property
    def sizes(self) -> dict[str, int]:
        return dict(zip(self.dims, self.tensor.shape))

    @property
    def data(self):
        """What the contraction consumes: the tensor (lazy factors hand over themselves)."""
        return self.tensor

    def element_size(self) -> int:
        return self.tensor.element_size()


@runtime_checkable
class Dense(Protocol):
    """Anything a contraction slot may hold besides a tensor: it can be materialised."""

    @property
    def tensor(self) -> torch.Tensor: ...


@runtime_checkable
class LogFactor(Dense, Protocol):
    """What :class:`Factor`, ``lazy.LazyBernoulliLogProb`` and ``lazy.CategoricalTable`` share:
    named dims with their sizes, a dense log tensor over ``dims``, the element size used for
    memory estimates, and ``data`` (what the contraction consumes: the tensor, or the lazy
    factor itself). A chain's batched ``Row`` is only :class:`Dense`."""

    @property
    def dims(self) -> tuple[str, ...]: ...

    @property
    def sizes(self) -> dict[str, int]: ...

    @property
    def data(self) -> object: ...

    def element_size(self) -> int: ...


def dense(term: torch.Tensor | Dense) -> torch.Tensor:
    """A slot's dense tensor: a tensor as it is, a lazy factor or row materialised."""
    return term if torch.is_tensor(term) else term.tensor


def compact_shape(tensor: torch.Tensor) -> tuple[int, ...]:
    """``tensor``'s shape with every broadcast (stride-0) dimension reduced to size one."""
    return tuple(1 if stride == 0 else size for size, stride in zip(tensor.shape, tensor.stride()))


def compact(tensor: torch.Tensor, shape=None) -> torch.Tensor:
    """Undo ``expand``: keep one slice of every broadcast (stride-0) dimension.

    When the tensor is ``base.expand(...)``, the result is a plain view of ``base``, so that
    gradients reach ``base`` without ever being materialised at the expanded size (slicing the
    expanded tensor would allocate and fill that size in the backward pass). ``shape`` (the
    compact shape with singleton dims dropped or added) views the result so in the same step:
    one autograd node instead of two, which counts when there is one per site of a long model.
    """
    full = compact_shape(tensor)
    shape = full if shape is None else tuple(shape)
    if full == tuple(tensor.shape):
        return tensor if shape == full else tensor.reshape(shape)
    base = tensor._base
    if base is not None and base.numel() == math.prod(full):
        view = base.reshape(shape)
        kept = [s for n, s in zip(full, tensor.stride()) if n > 1]
        if view.storage_offset() == tensor.storage_offset() and kept == [
            s for n, s in zip(shape, view.stride()) if n > 1
        ]:
            return view
    compacted = tensor.as_strided(full, tensor.stride(), tensor.storage_offset())
    return compacted if shape == full else compacted.reshape(shape)


def align(tensor: torch.Tensor, dims: tuple[str, ...], target: tuple[str, ...]) -> torch.Tensor:
    """View ``tensor`` (named by ``dims``) broadcastably against the dims ``target``.

    Every name in ``dims`` must be in ``target``; missing names become singleton dims.
    """
    perm = sorted(range(len(dims)), key=lambda i: target.index(dims[i]))
    if perm != list(range(len(dims))):
        tensor = tensor.permute(perm)
        dims = tuple(dims[i] for i in perm)
    shape = [1] * len(target)
    for d, size in zip(dims, tensor.shape):
        shape[target.index(d)] = size
    return tensor if tensor.shape == tuple(shape) else tensor.reshape(shape)


def named_shape(
    shape,
    dim_names: dict[int, str],
    *,
    describe: str,
    singleton_names: frozenset = frozenset(),
) -> tuple[list[str], list[int]]:
    """Names and sizes of the dims of a Pyro-layout ``shape`` that a factor keeps.

    ``dim_names`` maps each negative dim that may carry a non-singleton size to its name.
    A non-singleton dim that is not named is a layout error in the model; ``describe`` is a
    phrase naming the site, used in the error message. Singleton dims are dropped, except those
    named in ``singleton_names`` (plates of size one: a rank's shard may hold a single item, and
    every rank must see the same dims).
    """
    names, sizes = [], []
    for pos in range(-len(shape), 0):
        size = shape[pos]
        name = dim_names.get(pos)
        if size == 1 and name not in singleton_names:
            continue
        if name is None:
            raise SiteShapeError(
                f"invalid log_prob shape: {describe} has a batch dimension {pos} of size {size} "
                f"that belongs to no plate and no enumerated variable. Declare it with "
                f"pyro.plate(..., dim={pos}), move it into the event with .to_event(), or raise "
                f"max_plate_nesting if a plate lies there and collides with enumeration dims "
                f"(left of the plates: a pyro.markov history shorter than the dependencies)."
            )
        names.append(name)
        sizes.append(size)
    return names, sizes


def name_dims(
    tensor: torch.Tensor,
    dim_names: dict[int, str],
    *,
    describe: str,
    singleton_names: frozenset = frozenset(),
) -> Factor:
    """Turn a Pyro-layout tensor (numbered negative dims) into a :class:`Factor` (see
    :func:`named_shape` for which dims it keeps)."""
    names, sizes = named_shape(
        tensor.shape, dim_names, describe=describe, singleton_names=singleton_names
    )
    return Factor(tensor if tensor.shape == tuple(sizes) else tensor.reshape(sizes), tuple(names))


def expand_plates(factor, plate_sizes: dict[str, int]) -> Factor:
    """``factor`` with a dim for every plate in ``plate_sizes`` (broadcast views where missing).

    Lazy factors are materialised first.
    """
    missing = [p for p in sorted(plate_sizes) if p not in factor.dims]
    if not missing:
        return factor
    tensor = factor.tensor
    for name in missing:
        tensor = tensor.unsqueeze(-1).expand((*tensor.shape, plate_sizes[name]))
    return Factor(tensor, tuple(factor.dims) + tuple(missing))
