"""Decoding a split streamed from Parquet shards: Pyro's MAP per item, each item's identity,
bounded-memory merge, resumable after a kill (identical bytes), sharded over 2 ranks."""

import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from decoding_run_dirs import make_streamed_run_dir

from enumdist.data.synthetic import SyntheticSpec, shard_path
from enumdist.decoding import run_decoding
from enumdist.pipeline.streaming import ShardedSplit
from enumdist.process_group import process_group

SPEC = SyntheticSpec.of_sizes(
    60, 20, 70, num_keys=6, hidden_dim=3, max_length=30, shard_size=25, seed=5
)
OPTIONS = {"decode_batch_size": 4, "progress": False, "pictures": False}


@pytest.fixture
def streamed_run(synthetic_root, tmp_path):
    data_root = synthetic_root(SPEC)
    run_dir, model = make_streamed_run_dir(tmp_path, data_root, SPEC.num_keys, SPEC.hidden_dim)
    return run_dir, model, data_root


def decoded_file(run_dir, split="test"):
    return run_dir / "decoded" / f"{split}-temperature0" / "decoded.parquet"


def test_streamed_split_decodes_to_pyros_map_with_each_items_identity(streamed_run):
    run_dir, model, data_root = streamed_run
    outputs = run_decoding(run_dir, dict(OPTIONS, pictures=True))
    rows = pq.read_table(outputs["decoded"]).to_pylist()
    assert [r["index"] for r in rows] == list(range(70))  # global item id, shard = index // 25
    stored = pq.read_table(shard_path(data_root, "test", 2)).to_pylist()
    assert [r["length"] for r in rows[50:]] == [r["length"] for r in stored]
    split = ShardedSplit(data_root, "test")
    batch = split.dense_batch(list(range(70)), int(split.lengths.max()))
    batch["num_total"] = 70
    decoded = pyro.infer.infer_discrete(model.model, first_available_dim=-3, temperature=0)
    trace = pyro.poutine.trace(decoded).get_trace(batch)
    for b, r in enumerate(rows):
        assert r["x"] == [
            int(trace.nodes[f"x_{t}"]["value"].reshape(-1)[b]) for t in range(r["length"])
        ]
        assert r["path_posterior"] == pytest.approx(math.exp(r["log_joint"] - r["log_evidence"]))
    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=2).loss(model.model, lambda b: None, batch)
    assert sum(r["log_evidence"] for r in rows) == pytest.approx(-loss, rel=1e-5)
    assert outputs["piano_roll"].is_file()


def test_max_items_decodes_a_prefix(streamed_run):
    run_dir, _, _ = streamed_run
    table = pq.read_table(run_decoding(run_dir, dict(OPTIONS, max_items=9))["decoded"])
    assert table.column("index").to_pylist() == list(range(9))


def test_killed_decode_resumes_to_identical_bytes(streamed_run, tmp_path):
    run_dir, _, _ = streamed_run
    # valid: 20 items, one per chunk, so that the kill lands in the middle
    options = dict(OPTIONS, split="valid", decode_batch_size=1)
    reference = run_decoding(shutil.copytree(run_dir, tmp_path / "reference"), options)["decoded"]
    script = (
        f"from enumdist.decoding import run_decoding; run_decoding({str(run_dir)!r}, {options!r})"
    )
    process = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ))
    out_dir = decoded_file(run_dir, "valid").parent
    deadline = time.monotonic() + 120
    while len(list(out_dir.glob("chunks-*/*.parquet"))) < 3 and process.poll() is None:
        assert time.monotonic() < deadline, "the decode wrote no chunks in 120 s"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(list(out_dir.glob("chunks-*/*.parquet")))
    assert 3 <= written < 20 and not decoded_file(run_dir, "valid").exists()  # killed midway
    resumed = run_decoding(run_dir, options)["decoded"]
    assert resumed.read_bytes() == reference.read_bytes()
    assert not list(out_dir.rglob(".*tmp*"))  # no temporary file left behind


def _rank(rank, world_size, init_file, run_dir):
    torch.set_num_threads(1)
    with process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size):
        run_decoding(run_dir, dict(OPTIONS, split="valid"))
        dist.barrier()


@pytest.mark.slow
def test_two_ranks_decode_the_streamed_split_as_one_process(streamed_run, tmp_path):
    run_dir, _, _ = streamed_run
    single = pq.read_table(run_decoding(run_dir, dict(OPTIONS, split="valid"))["decoded"])
    shutil.rmtree(run_dir / "decoded")
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), run_dir), nprocs=2, join=True)
    sharded = pq.read_table(decoded_file(run_dir, "valid"))
    assert sharded.column("index").to_pylist() == list(range(20))
    assert sharded.column("x").to_pylist() == single.column("x").to_pylist()
    torch.testing.assert_close(
        torch.tensor(sharded.column("log_evidence").to_pylist()),
        torch.tensor(single.column("log_evidence").to_pylist()),
    )
