"""The one atomic writer: a file exists complete (old or new) or not at all."""

import hashlib
import os

import pytest

from enumdist.atomic import TEMPORARY_GLOB, atomic_path, atomic_write


class Killed(BaseException):
    """Stands for a kill mid-write (not an Exception: no handler may swallow it)."""


def write_half_then_die(f):
    f.write(b"half of the new ")
    f.flush()
    raise Killed


@pytest.mark.parametrize("form", ["file object", "path"])
def test_a_writer_that_dies_halfway_leaves_the_old_file_and_no_temporary(tmp_path, form):
    path = tmp_path / "state.bin"
    atomic_write(path, lambda f: f.write(b"old, complete"))
    with pytest.raises(Killed):
        if form == "file object":
            atomic_write(path, write_half_then_die)
        else:
            with atomic_path(path) as temporary, open(temporary, "wb") as f:
                write_half_then_die(f)
    assert path.read_bytes() == b"old, complete"
    assert os.listdir(tmp_path) == ["state.bin"]


def test_a_first_write_that_fails_leaves_nothing(tmp_path):
    with pytest.raises(OSError, match="disk full"), atomic_path(tmp_path / "new" / "file.json"):
        raise OSError("disk full")
    assert os.listdir(tmp_path / "new") == []


def test_after_success_the_file_is_complete_with_ordinary_permissions(tmp_path):
    data = os.urandom(3 << 20)  # several of file_sha256's blocks
    path = tmp_path / "sub" / "big.bin"
    digest = atomic_write(path, lambda f: f.write(data), checksum=True)
    assert path.read_bytes() == data and digest == hashlib.sha256(data).hexdigest()
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only 0600
    assert list(path.parent.glob(TEMPORARY_GLOB)) == []
    with atomic_path(path) as temporary:
        assert temporary.parent == path.parent and temporary.match(TEMPORARY_GLOB)
        temporary.write_bytes(b"replaced")
    assert path.read_bytes() == b"replaced" and os.listdir(path.parent) == ["big.bin"]


def writers():
    """Every kind of file the project writes, each through its own module's function."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pyarrow as pa

    from enumdist.data.cache import save_npz_atomic
    from enumdist.decoding.files import write_json, write_parquet
    from enumdist.decoding.pictures import save
    from enumdist.pipeline.checkpoint_files import save_checkpoint

    return {
        "cache.npz": lambda p: save_npz_atomic(p, {"a": np.zeros(3)}),
        "chunk.parquet": lambda p: write_parquet(pa.table({"a": [1, 2]}), p),
        "summary.json": lambda p: write_json({"a": 1}, p),
        "picture.png": lambda p: save(plt.figure(figsize=(1, 1)), p),
        "last.ckpt": lambda p: save_checkpoint({"state_dict": {}, "global_step": 3}, p),
    }


@pytest.mark.parametrize("name", list(writers()))
def test_every_writer_fsyncs_the_file_and_its_directory(tmp_path, monkeypatch, name):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = tmp_path / name
    writers()[name](path)
    assert path.stat().st_ino in synced  # the bytes (renaming keeps the inode)
    assert tmp_path.stat().st_ino in synced  # and the rename
    assert list(tmp_path.glob(TEMPORARY_GLOB)) == []
