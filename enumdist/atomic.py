"""The project's one way to write a file: it exists complete (old or new) or not at all.

Checkpoints, their sidecars, decoding chunks and pictures, the data cache, synthetic shards,
metrics and configs all go through :func:`atomic_path` (or :func:`atomic_write`, its file-object
form). The steps, and why each is there:

1. write to a temporary ``.<name>.<random>.tmp`` in the *same* directory (``os.replace`` is atomic
   only within one file system; the pattern is what
   :func:`enumdist.pipeline.checkpoint_files.tidy_checkpoints` sweeps after a kill);
2. ``fsync`` the temporary, so its bytes are on disk before its name is;
3. give it the permissions an ordinary new file gets (``mkstemp`` makes owner-only files, and run
   directories and caches are shared);
4. ``os.replace`` it over the final name;
5. ``fsync`` the directory, so the rename itself survives a power cut.

A writer that raises leaves the old file untouched and no temporary behind.

This module sits at the bottom of the package (standard library only): the pipeline, the
decoding stage and the data sets all import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

#: the names :func:`atomic_path` gives its temporaries (``.<name>.<random>.tmp``)
TEMPORARY_GLOB = ".*.tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends normally, whatever was written
    there becomes ``path`` (fsync, rename, fsync of the directory); when it raises, the temporary
    is deleted and ``path`` is as it was. Missing parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        _fsync(temporary)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[bytes]], object], checksum: bool = False
) -> str | None:
    """Call ``write(binary file object)`` on a temporary next to ``path`` and put it in place
    (:func:`atomic_path`). With ``checksum``, returns the sha256 hex digest of exactly the bytes
    that land at ``path`` (read back from the temporary before the rename)."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as f:
            write(f)
        return file_sha256(temporary) if checksum else None


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
