"""Read wandb's own offline files: ``<run_dir>/wandb/offline-run-*/run-<id>.wandb``.

The file is wandb's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then
LevelDB-log framed chunks (4-byte CRC, 2-byte little-endian length, 1-byte type: full, first,
middle, last) in 32 KiB blocks, each record a ``wandb_internal_pb2.Record``. wandb 0.31 ships no
Python reader (its core is written in Go), so the tests read it here with wandb's protobufs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    assert data[:7] == HEADER, f"{path}: not a wandb transaction log"
    out, pending, offset = [], b"", 7
    while offset + 7 <= len(data):
        if BLOCK - offset % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            offset += BLOCK - offset % BLOCK
            continue
        length, kind = struct.unpack("<HB", data[offset + 4 : offset + 7])
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:  # zero padding
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def of_kind(path, kind: str) -> list:
    return [getattr(r, kind) for r in records(path) if r.WhichOneof("record_type") == kind]


def run_files(run_dir: str | Path) -> list[Path]:
    """The run's ``.wandb`` files, oldest first (a resumed run has one per segment)."""
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))


def run_info(path) -> dict:
    run = of_kind(path, "run")[0]
    return {
        "id": run.run_id,
        "name": run.display_name,
        "group": run.run_group,
        "tags": list(run.tags),
        "project": run.project,
    }


def config(path) -> dict:
    """The run's config (the last value of each key over all config records), ``_wandb`` left out."""
    values = {}
    initial = [run.config for run in of_kind(path, "run")]
    for record in initial + of_kind(path, "config"):
        for item in record.update:
            values[item.key] = json.loads(item.value_json)
    values.pop("_wandb", None)
    return values


def history(path) -> list[dict]:
    """One dict per ``wandb.log`` call: key -> value."""
    rows = []
    for record in of_kind(path, "history"):
        row = {}
        for item in record.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows


def summary(path) -> dict:
    values = {}
    for record in of_kind(path, "summary"):
        for item in record.update:
            key = item.key or "/".join(item.nested_key)
            values[key] = json.loads(item.value_json)
    return values


def artifacts(path) -> list[dict]:
    return [
        {"name": a.name, "type": a.type, "files": [m.path for m in a.manifest.contents]}
        for a in of_kind(path, "artifact")
    ]
