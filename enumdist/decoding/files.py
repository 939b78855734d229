"""The decoding stage's file formats (Parquet tables, JSON), each written through
:func:`enumdist.atomic.atomic_path`: a file exists complete or not at all, even after a crash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from enumdist.atomic import atomic_path


def write_parquet(table: pa.Table, path: str | os.PathLike) -> Path:
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)
    return Path(path)


def write_json(data: dict, path: str | os.PathLike) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
    return Path(path)
