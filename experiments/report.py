"""One way for the benchmark scripts to write BENCHMARKS.md: each script owns one marked section.

A section lies between ``<!-- name:begin -->`` and ``<!-- name:end -->``; writing it replaces
that block and leaves every other section alone (a section not there yet is appended), so the
scripts can be rerun in any order. The file is replaced atomically (:mod:`enumdist.atomic`).
"""

from __future__ import annotations

import os
from pathlib import Path

from enumdist.atomic import atomic_path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(path: str | os.PathLike, name: str, lines: list[str]) -> None:
    """Replace (or append) section ``name`` of ``path`` with ``lines``."""
    path = Path(path)
    begin, end = markers(name)
    block = "\n".join([begin, *lines, end])
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with atomic_path(path) as temporary:
        temporary.write_text(text)
