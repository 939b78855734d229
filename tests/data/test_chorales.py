"""Chorale loading: quick tests on the first 15 corpus files, one slow test on the whole corpus."""

import time

import numpy as np
import pytest
import torch

from enumdist.data import chorales
from enumdist.data.chorales import load_all_chorales, load_chorales
from enumdist.data.splits import SPLITS

LIMIT = 15  # covers train, valid and test, and one five-part score that must be skipped


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    torch.set_num_threads(1)
    cache_dir = tmp_path_factory.mktemp("chorale-cache")
    load_all_chorales(cache_dir=cache_dir, progress=False, limit=LIMIT)
    return cache_dir


def _forbid_parsing(monkeypatch):
    def fail(path):
        raise AssertionError(f"parsed {path} although a usable cache exists")

    monkeypatch.setattr(chorales, "chorale_roll", fail)


def test_splits_are_shaped_padded_and_disjoint(small_cache):
    loaded = {s: load_chorales(s, cache_dir=small_cache, limit=LIMIT) for s in SPLITS}
    names = [n for rolls in loaded.values() for n in rolls.names]
    assert len(names) == len(set(names)) == LIMIT - 2  # bwv1.6 and bwv112.5-sc have five parts
    for rolls in loaded.values():
        _n, t_max, keys = rolls.sequences.shape
        assert (
            keys == 88 and rolls.lengths.max() == t_max and rolls.sequences.dtype == torch.float32
        )
        for seq, length in zip(rolls.sequences, rolls.lengths):
            assert seq[length:].sum() == 0  # padding is zero
            assert seq[:length].sum(-1).min() >= 0 and seq[:length].amax() == 1


def test_known_chorale_content(small_cache):
    train = load_chorales("train", cache_dir=small_cache, limit=LIMIT, dtype=torch.float64)
    roll = train.sequences[train.names.index("bwv10.7.mxl")]
    assert roll.dtype == torch.float64
    # four voices: at most four keys per step, and the first step is a full chord
    assert roll.sum(-1).max() <= 4 and roll[0].sum() >= 3


def test_cache_round_trip_reads_without_parsing(small_cache, monkeypatch):
    before = load_chorales("train", cache_dir=small_cache, limit=LIMIT)
    _forbid_parsing(monkeypatch)
    after = load_chorales("train", cache_dir=small_cache, limit=LIMIT)
    assert torch.equal(before.sequences, after.sequences) and before.names == after.names


def test_corrupt_cache_is_rebuilt_with_a_warning(small_cache, tmp_path):
    good = load_chorales("valid", cache_dir=small_cache, limit=LIMIT)
    (tmp_path / f"chorales-v1-first{LIMIT}.npz").write_bytes(b"truncated garbage")
    with pytest.warns(
        UserWarning, match=r"rebuilding chorale cache .*chorales-v1-first15\.npz: .*unreadable"
    ):
        rebuilt = load_chorales("valid", cache_dir=tmp_path, limit=LIMIT, progress=False)
    assert torch.equal(good.sequences, rebuilt.sequences)
    load_chorales("valid", cache_dir=tmp_path, limit=LIMIT)  # and the rebuilt file is good


def test_cache_from_another_music21_is_rebuilt(small_cache, tmp_path):
    arrays = load_all_chorales(cache_dir=small_cache, limit=LIMIT)
    chorales.save_npz_atomic(
        tmp_path / f"chorales-v1-first{LIMIT}.npz", {**arrays, "music21_version": np.array("0.0")}
    )
    with pytest.warns(UserWarning, match="built with music21 0.0"):
        load_chorales("test", cache_dir=tmp_path, limit=LIMIT, progress=False)


def test_empty_split_and_bad_split_are_explained(tmp_path):
    with pytest.raises(ValueError, match=r"'valid' split of the chorales is empty.*limit=2"):
        load_chorales("valid", cache_dir=tmp_path, limit=2, progress=False)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_chorales("dev", cache_dir=tmp_path)


@pytest.mark.slow
def test_full_corpus_build_matches_known_statistics(tmp_path_factory, monkeypatch):
    torch.set_num_threads(1)
    cache_dir = tmp_path_factory.mktemp("full-chorale-cache")
    start = time.perf_counter()
    train = load_chorales("train", cache_dir=cache_dir, progress=False)
    build_s = time.perf_counter() - start
    _forbid_parsing(monkeypatch)
    valid, test = (load_chorales(s, cache_dir=cache_dir) for s in ("valid", "test"))
    lengths = torch.cat([train.lengths, valid.lengths, test.lengths])
    assert len(lengths) == 368 and lengths.max() == 193 and 50 < lengths.float().mean() < 58
    assert (len(train), len(valid), len(test)) == (260, 49, 59)
    keys = train.active_keys()
    assert len(keys) == 45 and keys.min() >= 21 and keys.max() <= 108
    # valid and test use no key that train never plays, so restricting loses nothing
    for rolls in (valid, test):
        small = rolls.restrict_keys(keys)
        assert small.sequences.shape[-1] == 45 and small.sequences.sum() == rolls.sequences.sum()
    print(f"full chorale build: {build_s:.1f} s")
