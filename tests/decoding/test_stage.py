"""The decoding stage end to end on a tiny HMM run: oracle, atomic resume, clear errors."""

import math

import pyarrow.parquet as pq
import pyro
import pytest
import torch
from decoding_run_dirs import NUM_KEYS, hmm_marginals, make_run_dir, piano_rolls
from pyro import poutine

import enumdist.decoding.stage as stage
from enumdist.decoding import CheckpointMismatchError, run_decoding

OPTIONS = {"decode_batch_size": 2, "progress": False}


def pyro_map_states(model, sequences, lengths):
    batch = {
        "sequences": sequences,
        "lengths": lengths,
        "index": torch.arange(len(lengths)),
        "num_total": len(lengths),
    }
    decoded = pyro.infer.infer_discrete(model.model, first_available_dim=-3, temperature=0)
    trace = poutine.trace(decoded).get_trace(batch)
    states = torch.stack(
        [trace.nodes[f"x_{t}"]["value"].reshape(-1) for t in range(sequences.shape[1])], -1
    )
    return [row[: int(n)].tolist() for row, n in zip(states, lengths)]


def test_map_equals_pyro_and_outputs_exist(hmm_run):
    run_dir, model = hmm_run
    outputs = run_decoding(run_dir, dict(OPTIONS, marginals=True))
    for name in ("decoded", "manifest", "transitions", "piano_roll", "marginals"):
        assert outputs[name].is_file(), name
    rows = pq.read_table(outputs["decoded"]).to_pylist()
    test = torch.load(run_dir.parent / "data" / "test.pt")
    assert [r["index"] for r in rows] == list(range(len(test["lengths"])))
    assert [r["x"] for r in rows] == pyro_map_states(model, test["sequences"], test["lengths"])
    batch = dict(test, index=torch.arange(len(test["lengths"])), num_total=len(test["lengths"]))
    expected = hmm_marginals(model, batch)
    for r in rows:
        probs = torch.tensor(r["x_marginals"])
        assert probs.shape == (r["length"], 3)
        for t in range(r["length"]):
            torch.testing.assert_close(probs[t], expected[f"x_{t}"][r["index"], 0].float())
        torch.testing.assert_close(
            torch.tensor(r["x_confidence"]),
            probs.gather(-1, torch.tensor(r["x"])[:, None]).squeeze(-1),
        )
        assert r["log_joint"] <= r["log_evidence"] + 1e-5
        assert r["path_posterior"] == pytest.approx(math.exp(r["log_joint"] - r["log_evidence"]))
    # each item's evidence: together they are Pyro's -loss of the split at scale one
    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=2).loss(model.model, lambda b: None, batch)
    assert sum(r["log_evidence"] for r in rows) == pytest.approx(-loss, rel=1e-5)


def test_crash_midway_then_resume_gives_identical_output(hmm_run, monkeypatch, tmp_path):
    run_dir, _ = hmm_run
    reference = pq.read_table(run_decoding(run_dir, OPTIONS)["decoded"])
    out_dir = run_dir / "decoded" / "test-temperature0"
    for path in out_dir.glob("chunks-*/*"):
        path.unlink()
    (out_dir / "decoded.parquet").unlink()

    real_write, written = stage.write_chunk, []

    def crash_after_first(path, table):
        if written:
            raise RuntimeError("simulated crash")
        written.append(real_write(path, table))
        return written[-1]

    monkeypatch.setattr(stage, "write_chunk", crash_after_first)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_decoding(run_dir, OPTIONS)
    files = sorted(p.name for p in out_dir.glob("chunks-*/*"))
    assert files == [written[0].name]  # no partial or temporary files
    assert not (out_dir / "decoded.parquet").exists()

    monkeypatch.setattr(stage, "write_chunk", real_write)
    mtime = written[0].stat().st_mtime_ns
    resumed = pq.read_table(run_decoding(run_dir, OPTIONS)["decoded"])
    assert written[0].stat().st_mtime_ns == mtime  # the finished chunk was skipped
    assert resumed.equals(reference)


def test_sampling_is_reproducible(hmm_run):
    run_dir, _ = hmm_run
    options = dict(OPTIONS, temperature=1, pictures=False)
    first = pq.read_table(run_decoding(run_dir, options)["decoded"])
    for path in (run_dir / "decoded" / "test-temperature1").glob("chunks-*/*"):
        path.unlink()
    assert pq.read_table(run_decoding(run_dir, options)["decoded"]).equals(first)


def test_nan_in_piano_roll_is_named(tmp_path):
    rolls = piano_rolls(4)
    rolls["sequences"][2, 1, 3] = float("nan")
    run_dir, _ = make_run_dir(tmp_path, test_split=rolls)
    with pytest.raises(ValueError, match="NaN"):
        run_decoding(run_dir, OPTIONS)


def test_wrong_number_of_keys_is_named(tmp_path):
    run_dir, _ = make_run_dir(tmp_path, test_split=piano_rolls(4, num_keys=NUM_KEYS + 2))
    with pytest.raises(ValueError, match=f"expected {NUM_KEYS} keys"):
        run_decoding(run_dir, OPTIONS)


def test_empty_split_is_refused(tmp_path):
    empty = {"sequences": torch.zeros(0, 7, NUM_KEYS), "lengths": torch.zeros(0, dtype=torch.long)}
    run_dir, _ = make_run_dir(tmp_path, test_split=empty)
    with pytest.raises(ValueError, match="empty"):
        run_decoding(run_dir, OPTIONS)


def test_missing_checkpoint_is_named(hmm_run):
    run_dir, _ = hmm_run
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_decoding(run_dir, OPTIONS)


def test_checkpoint_of_another_model_names_model_and_keys(tmp_path):
    run_dir, _ = make_run_dir(tmp_path / "a")
    other_dir, _ = make_run_dir(tmp_path / "b", model_cls="FactorialHMM")
    options = dict(OPTIONS, checkpoint=str(other_dir / "checkpoints" / "last.ckpt"))
    with pytest.raises(CheckpointMismatchError, match=r"enumdist\.models\.HMM.*transition_w"):
        run_decoding(run_dir, options)


def test_unknown_option_is_named(hmm_run):
    with pytest.raises(ValueError, match="decode_batch"):
        run_decoding(hmm_run[0], {"decode_batchsize": 3})


def test_mixture_decoding_replays_the_trained_guide(tmp_path):
    from decoding_run_dirs import make_mixture_run_dir

    run_dir, model, guide = make_mixture_run_dir(tmp_path)
    outputs = run_decoding(run_dir, dict(OPTIONS, split="test"))
    assert "transitions" not in outputs and "piano_roll" not in outputs  # no chain
    rows = pq.read_table(outputs["decoded"]).to_pylist()
    features = torch.load(run_dir.parent / "data" / "test.pt")["features"]
    batch = {"features": features, "index": torch.arange(7), "num_total": 7}
    replayed = poutine.replay(model.model, trace=poutine.trace(guide).get_trace(batch))
    expected = poutine.trace(
        pyro.infer.infer_discrete(replayed, first_available_dim=-2, temperature=0)
    ).get_trace(batch)
    assert [r["assignment"] for r in rows] == [
        [int(a)] for a in expected.nodes["assignment"]["value"]
    ]


def test_command_line(hmm_run, capsys):
    from enumdist.decode import decode

    run_dir, _ = hmm_run
    outputs = decode(
        {"run_dir": str(run_dir), "decode_batch_size": 4, "progress": False, "pictures": False}
    )
    assert outputs["decoded"].is_file()
    assert "decoded:" in capsys.readouterr().out
    with pytest.raises(ValueError, match="run_dir"):
        decode({"split": "test"})


def test_other_options_or_a_new_checkpoint_never_reuse_chunks(hmm_run):
    run_dir, model = hmm_run
    plain = pq.read_table(run_decoding(run_dir, dict(OPTIONS, pictures=False))["decoded"])
    assert "x_marginals" not in plain.column_names
    with_marginals = run_decoding(run_dir, dict(OPTIONS, pictures=False, marginals=True))
    assert "x_marginals" in pq.read_table(with_marginals["decoded"]).column_names
    assert "log_evidence" in plain.column_names
    without = run_decoding(run_dir, dict(OPTIONS, pictures=False, probabilities=False))
    assert not {"log_joint", "log_evidence", "path_posterior"} & set(
        pq.read_table(without["decoded"]).column_names
    )
    # retrain: same path, other weights
    other = type(model)(NUM_KEYS, 3, seed=123)
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in other.state_dict().items()}},
        run_dir / "checkpoints" / "last.ckpt",
    )
    fresh = pq.read_table(run_decoding(run_dir, dict(OPTIONS, pictures=False))["decoded"])
    test = torch.load(run_dir.parent / "data" / "test.pt")
    assert fresh.column("x").to_pylist() == pyro_map_states(
        other, test["sequences"], test["lengths"]
    )
