"""Errors the engine raises; each message names the site, plate or option and the fix."""


class EnumerationError(ValueError):
    """A model/guide cannot be enumerated as written (layout, support, scale, data)."""


class ModelStructureError(EnumerationError):
    """Ranks of a sharded run disagree on the model's structure (sites, plates, sizes)."""


class MemoryBudgetError(EnumerationError):
    """The elimination would allocate a tensor larger than the memory budget."""


class ShardError(RuntimeError):
    """Another rank of a sharded run failed; raised on every rank instead of hanging."""
