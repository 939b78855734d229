"""Run a 2-rank gloo job N times in a row under CPU load and count the runs that abort at exit.

    python scripts/gloo_exit_runs.py --runs 50 --load 2            # the project's spawn path
    python scripts/gloo_exit_runs.py --runs 20 --load 2 --no-fix   # plain init_process_group

Each run spawns 2 ranks that do what the project's spawned ranks do: a sharded EnumELBO loss and
gradient, an optimiser step (it imports ``torch._dynamo``), the sharded engine's error path (bad
data on one shard: ShardError on every rank), then ``destroy_process_group`` and a normal exit.
With the fix, ranks start their group through ``enumdist.process_group.init_process_group``;
with ``--no-fix`` through ``torch.distributed.init_process_group`` directly. An abort is a rank
that exits by a signal (SIGABRT: "terminate called without an active exception"). Not a test:
the 2-rank tests in CI use the same helper; this shows the count once (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _burn(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _rank(rank: int, world: int, port: int, fix: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist

    if fix:
        from enumdist.process_group import init_process_group

        init_process_group("gloo", rank=rank, world_size=world, timeout_s=60)
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    import pyro

    import enumdist
    from enumdist.engine.errors import ShardError
    from tests.engine import zoo

    torch.set_num_threads(1)
    data = zoo._data(40, seed=11).chunk(world)[rank]
    pyro.clear_param_store()
    elbo = enumdist.EnumELBO(max_plate_nesting=1, shard_plates=["data"])
    elbo.loss_and_grads(zoo.global_outside_plate, zoo.empty_guide, data)
    params = [p.unconstrained() for p in pyro.get_param_store().values()]
    torch.optim.Adam(params, lr=0.01).step()  # the first step imports torch._dynamo
    bad = zoo._data(10, seed=2).chunk(world)[rank].clone()
    if rank == 1:
        bad[0] = float("nan")
    try:
        enumdist.EnumELBO(max_plate_nesting=1, shard_plates=["data"]).loss(
            zoo.gaussian_mixture, zoo.empty_guide, bad
        )
    except ShardError:
        pass
    else:
        raise AssertionError("bad data on one shard must raise ShardError on every rank")
    dist.destroy_process_group()
    sys.stdout.flush()


def one_run(fix: bool) -> list[int]:
    """Exit codes of the 2 ranks (negative: killed by that signal)."""
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    processes = [context.Process(target=_rank, args=(r, 2, port, fix)) for r in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=300)
    return [p.exitcode for p in processes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--load", type=int, default=2, help="busy-loop processes running meanwhile")
    parser.add_argument(
        "--no-fix", action="store_true", help="plain torch.distributed.init_process_group"
    )
    args = parser.parse_args()
    stop = multiprocessing.Event()
    burners = [
        multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.load)
    ]
    for b in burners:
        b.start()
    aborts, failures, start = 0, 0, time.monotonic()
    try:
        for run in range(1, args.runs + 1):
            codes = one_run(fix=not args.no_fix)
            aborted = any(c is not None and c < 0 for c in codes)
            aborts += aborted
            failures += not aborted and any(c != 0 for c in codes)
            print(f"run {run:3d}: exit codes {codes}{'  ABORT' if aborted else ''}", flush=True)
    finally:
        stop.set()
    print(
        f"{'without' if args.no_fix else 'with'} the fix, {args.load} busy processes: {aborts} aborts and "
        f"{failures} other failures in {args.runs} runs ({time.monotonic() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
