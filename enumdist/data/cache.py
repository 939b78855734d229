"""Where derived data sets are cached, and how a cache file is written and read safely.

Parsed data sets (the chorales take about a minute to build) are stored as ``.npz`` files in
``cache_dir`` (an explicit argument), else ``$ENUMDIST_CACHE``, else ``~/.cache/enumdist``.
Files are written atomically (:mod:`enumdist.atomic`: a temporary file in the same directory,
fsync'ed, then ``os.replace``d over the final name), so a reader never sees a half-written cache
even if the writer is killed, and concurrent builders (DDP ranks, parallel tests) simply let the
last complete write win.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from enumdist.atomic import atomic_write
from enumdist.engine.errors import EnumdistError

CACHE_ENV = "ENUMDIST_CACHE"


class CorruptCacheError(EnumdistError, ValueError):
    """A cache file exists but cannot be read back (truncated, not an npz, missing arrays)."""


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$ENUMDIST_CACHE``, else ``~/.cache/enumdist`` (created)."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "enumdist"
    path = Path(cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` (compressed npz) so that ``path`` is either absent/old or complete."""
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    return Path(path)


def load_npz(path: str | os.PathLike, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read every array of the npz at ``path``; raise :class:`CorruptCacheError` if unreadable
    or if any name in ``required`` is missing. Never unpickles (``allow_pickle=False``)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise CorruptCacheError(
            f"cache file {path} is unreadable ({type(error).__name__}: {error}); "
            f"delete it and it will be rebuilt"
        ) from error
    missing = [key for key in required if key not in arrays]
    if missing:
        raise CorruptCacheError(
            f"cache file {path} lacks arrays {missing}; it was written by another version; "
            f"delete it and it will be rebuilt"
        )
    return arrays
