"""Decoding with two gloo ranks (spawned explicitly) equals decoding in one process."""

import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from decoding_run_dirs import make_run_dir

from enumdist.decoding import run_decoding
from enumdist.process_group import process_group

OPTIONS = {"decode_batch_size": 2, "progress": False, "marginals": True}


def _rank(rank, world_size, init_file, run_dir):
    torch.set_num_threads(1)
    with process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size):
        run_decoding(run_dir, OPTIONS)
        if rank == 0:  # as the train entry point does: rank 0 alone, the group still up
            run_decoding(run_dir, {"decode": dict(OPTIONS, enabled=True, split="valid")})
        dist.barrier()


def test_two_ranks_equal_one_process(tmp_path):
    run_dir, _ = make_run_dir(tmp_path, num_test=7)  # odd: the last step gives one rank 1 item
    single = pq.read_table(run_decoding(run_dir, OPTIONS)["decoded"])
    for path in (run_dir / "decoded").rglob("*.parquet"):
        path.unlink()
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), run_dir), nprocs=2, join=True)
    assert (run_dir / "decoded" / "valid-temperature0" / "decoded.parquet").is_file()
    sharded = pq.read_table(run_dir / "decoded" / "test-temperature0" / "decoded.parquet")
    assert sharded.column("index").to_pylist() == single.column("index").to_pylist()
    assert sharded.column("x").to_pylist() == single.column("x").to_pylist()
    for column in ("log_joint", "log_evidence", "path_posterior"):
        torch.testing.assert_close(
            torch.tensor(sharded.column(column).to_pylist()),
            torch.tensor(single.column(column).to_pylist()),
        )
    for a, b in zip(
        sharded.column("x_marginals").to_pylist(), single.column("x_marginals").to_pylist()
    ):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b))
