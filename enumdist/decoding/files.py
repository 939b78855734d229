"""Atomic file writes: a file either exists complete or not at all, even after a crash."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path`` (``os.replace``
    is atomic on one file system), on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_parquet(table: pa.Table, path: str | os.PathLike) -> Path:
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)
    return Path(path)


def write_json(data: dict, path: str | os.PathLike) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
    return Path(path)
