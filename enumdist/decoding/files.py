"""The decoding stage's file formats (Parquet tables, JSON), each written through
:func:`enumdist.atomic.atomic_path`: a file exists complete or not at all, even after a crash."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from enumdist.atomic import atomic_path


def write_parquet(table: pa.Table, path: str | os.PathLike) -> Path:
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)
    return Path(path)


def write_parquet_streamed(
    tables: Iterable[pa.Table], path: str | os.PathLike, row_group_rows: int = 8192
) -> int:
    """Append ``tables`` (same columns) to one Parquet file without holding them all: at most
    ``row_group_rows`` rows are buffered, each flush is one row group. Atomic and durable
    (:func:`~enumdist.atomic.atomic_path`): ``path`` is the old file or the complete new one. Every table is cast to
    the first one's schema, so that a chunk whose values all happen to be null or empty cannot
    change a column's type. Deterministic: the same tables give the same bytes. -> rows written.
    """
    rows = 0
    with atomic_path(path) as temporary, open(temporary, "wb") as sink:
        writer, pending, buffered = None, [], 0
        for table in tables:
            if writer is None:
                writer = pq.ParquetWriter(sink, table.schema)
            pending.append(table.cast(writer.schema))
            buffered += table.num_rows
            if buffered >= row_group_rows:
                writer.write_table(pa.concat_tables(pending), row_group_size=buffered)
                rows, pending, buffered = rows + buffered, [], 0
        if writer is None:
            raise ValueError(f"{path}: nothing to write")
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=buffered)
            rows += buffered
        writer.close()  # atomic_path fsyncs the file and renames it once it is closed
    return rows


def write_json(data: dict, path: str | os.PathLike) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
    return Path(path)
