"""Deterministic train/valid/test assignment of named items, shared by every data set.

An item's split depends only on its name (a file name, a row id, a topic key): SHA-256 of
``"{salt}:{name}"`` mapped to a number in [0, 1), compared with the cumulative fractions.
So a split never changes when other items are added, removed or reordered, and needs no seed,
no stored index file and no RNG state. Fractions are met in expectation, not exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: default fractions of (train, valid, test)
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)


def unit_hash(name: str, salt: str = "") -> float:
    """A number in [0, 1) that depends only on ``salt`` and ``name`` (stable across machines)."""
    digest = hashlib.sha256(f"{salt}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def check_split(split: str) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise a ValueError naming the choices."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return split


def assign_split(
    name: str, *, salt: str = "", fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> str:
    """The split (``"train"``, ``"valid"`` or ``"test"``) of the item called ``name``."""
    if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(
            f"fractions must be {len(SPLITS)} non-negative numbers summing to 1 "
            f"(train, valid, test), got {tuple(fractions)}"
        )
    u = unit_hash(name, salt)
    cumulative = 0.0
    for split, fraction in zip(SPLITS, fractions):
        cumulative += fraction
        if u < cumulative:
            return split
    return SPLITS[-1]  # u rounds up to 1.0 only through float error


def select_split(
    names: Iterable[str],
    split: str,
    *,
    salt: str = "",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> list[int]:
    """Positions, in order, of the ``names`` that fall into ``split``."""
    check_split(split)
    return [
        i
        for i, name in enumerate(names)
        if assign_split(name, salt=salt, fractions=fractions) == split
    ]
