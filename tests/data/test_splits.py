import pytest

from enumdist.data.splits import SPLITS, assign_split, select_split, unit_hash


def test_assignment_depends_only_on_name_and_salt():
    names = [f"item{i}" for i in range(2000)]
    first = [assign_split(n) for n in names]
    assert first == [assign_split(n) for n in reversed(names)][::-1]
    assert first != [assign_split(n, salt="other") for n in names]
    # fractions are met in expectation: 70/15/15
    share = {s: first.count(s) / len(names) for s in SPLITS}
    assert abs(share["train"] - 0.70) < 0.04 and abs(share["test"] - 0.15) < 0.04


def test_select_split_partitions_the_items():
    names = [f"n{i}" for i in range(300)]
    chosen = [select_split(names, s) for s in SPLITS]
    assert sorted(i for part in chosen for i in part) == list(range(300))


def test_unit_hash_is_a_stable_number_in_unit_interval():
    assert 0 <= unit_hash("bwv1.6.mxl", "x") < 1
    assert unit_hash("bwv1.6.mxl", "x") == unit_hash("bwv1.6.mxl", "x")


def test_bad_split_and_fractions_are_named():
    with pytest.raises(ValueError, match="unknown split 'training'.*train, valid, test"):
        select_split(["a"], "training")
    with pytest.raises(ValueError, match="summing to 1"):
        assign_split("a", fractions=(0.5, 0.5, 0.5))
