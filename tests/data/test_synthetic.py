"""The ground-truth generator: shards follow the known model, and writing them is resumable."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from enumdist.data.synthetic import SyntheticSpec, generate, load_truth, shard_path, true_model

SPEC = SyntheticSpec.of_sizes(
    600, 50, num_keys=10, hidden_dim=3, max_length=60, shard_size=200, seed=1
)


@pytest.fixture(scope="module")
def root(synthetic_root):
    return synthetic_root(SPEC)


def test_layout_and_columns(root):
    assert sorted(p.name for p in (root / "train").iterdir()) == [
        "shard-00000.parquet",
        "shard-00001.parquet",
        "shard-00002.parquet",
    ]
    table = pq.read_table(shard_path(root, "train", 1))
    assert table.column_names == ["index", "length", "keys", "x"]
    assert table["index"].to_pylist() == list(range(200, 400))
    lengths = table["length"].to_numpy()
    assert lengths.min() >= 20 and lengths.max() <= 60
    for row in table.slice(0, 5).to_pylist():
        assert len(row["keys"]) == len(row["x"]) == row["length"]
        assert all(0 <= k < 10 for step in row["keys"] for k in step)


def test_states_and_keys_follow_the_true_parameters(root):
    truth = load_truth(root)
    rows = pq.read_table(root / "train").to_pylist()
    counts = np.zeros((3, 3))
    sounding, visits = np.zeros((3, 10)), np.zeros(3)
    for row in rows:
        x = np.array(row["x"])
        np.add.at(counts, (x[:-1], x[1:]), 1)
        for state, keys in zip(x, row["keys"]):
            visits[state] += 1
            sounding[state, keys] += 1
    transition = counts / counts.sum(1, keepdims=True)
    assert np.abs(transition - truth["transition"]).max() < 0.02
    assert np.abs(sounding / visits[:, None] - truth["emission"]).max() < 0.03


def test_interrupted_generation_resumes_to_identical_shards(root, tmp_path):
    again = tmp_path / "again"
    generate(again, SPEC, progress=False)
    shard_path(again, "train", 1).unlink()  # as if killed before this shard was renamed
    (again / "train" / ".shard-00002.parquet.tmp-1").write_bytes(b"half a file")
    generate(again, SPEC, progress=False)
    for split, shard in (("train", 0), ("train", 1), ("train", 2), ("test", 0)):
        assert (
            shard_path(again, split, shard).read_bytes()
            == shard_path(root, split, shard).read_bytes()
        )


def test_another_spec_in_the_same_directory_is_refused(root):
    with pytest.raises(ValueError, match="another synthetic data set"):
        generate(
            root, SyntheticSpec(model="hmm", num_keys=10, hidden_dim=4, seed=1), progress=False
        )


def test_factorial_truth_loads_into_the_zoo_model(tmp_path):
    spec = SyntheticSpec.of_sizes(
        20, 5, model="factorial_hmm", num_keys=8, hidden_dim=2, shard_size=10
    )
    root = generate(tmp_path / "fhmm", spec, progress=False)
    model = true_model(root)
    truth = load_truth(root)
    assert type(model).__name__ == "FactorialHMM"
    np.testing.assert_allclose(model.emission.detach().numpy(), truth["emission"], rtol=1e-12)
    assert pq.read_table(shard_path(root, "train", 0)).column_names == [
        "index",
        "length",
        "keys",
        "w",
        "x",
    ]
    assert json.loads((root / "manifest.json").read_text())["spec"]["model"] == "factorial_hmm"
