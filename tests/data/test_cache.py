import os

import numpy as np
import pytest

from enumdist.data import cache
from enumdist.data.cache import CorruptCacheError, load_npz, resolve_cache_dir, save_npz_atomic


def test_round_trip(tmp_path):
    arrays = {"a": np.arange(6).reshape(2, 3), "names": np.array(["x", "yy"])}
    path = save_npz_atomic(tmp_path / "c.npz", arrays)
    back = load_npz(path, ("a", "names"))
    assert np.array_equal(back["a"], arrays["a"]) and back["names"].tolist() == ["x", "yy"]


def test_failed_write_leaves_old_file_and_no_partial_file(tmp_path, monkeypatch):
    path = save_npz_atomic(tmp_path / "c.npz", {"a": np.zeros(3)})

    def write_half_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the writer is killed mid-way

    monkeypatch.setattr(cache.np, "savez_compressed", write_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_npz_atomic(path, {"a": np.ones(3)})
    assert os.listdir(tmp_path) == ["c.npz"]  # no temp file left behind
    assert np.array_equal(load_npz(path, ("a",))["a"], np.zeros(3))  # old content intact


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(
        cache.np, "savez_compressed", lambda f, **a: (_ for _ in ()).throw(OSError("disk full"))
    )
    with pytest.raises(OSError, match="disk full"):
        save_npz_atomic(tmp_path / "c.npz", {"a": np.zeros(3)})
    assert os.listdir(tmp_path) == []


def test_corrupt_or_incomplete_file_is_named(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(CorruptCacheError, match=f"{bad}.*delete it"):
        load_npz(bad, ("a",))
    good = save_npz_atomic(tmp_path / "old.npz", {"a": np.zeros(1)})
    with pytest.raises(CorruptCacheError, match=r"lacks arrays \['b'\]"):
        load_npz(good, ("a", "b"))


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("ENUMDIST_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env" and (tmp_path / "env").is_dir()
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
