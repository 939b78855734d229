"""Errors the engine raises; each message names the site, plate or option and the fix."""


class EnumerationError(ValueError):
    """A model/guide cannot be enumerated as written (layout, support, scale, data)."""


class ModelStructureError(EnumerationError):
    """Ranks of a sharded run disagree on the model's structure (sites, plates, sizes)."""


class MemoryBudgetError(EnumerationError):
    """The elimination would allocate a tensor larger than the memory budget."""


class ShardError(RuntimeError):
    """Another rank of a sharded run failed; raised on every rank instead of hanging."""


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: sizes in the memory-budget messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
