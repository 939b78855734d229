"""One way for engine tests to run ``WORLD`` gloo ranks: spawn, wait with a deadline, collect.

Each worker is ``main(rank, world, port, outdir)`` and writes ``outdir/rank<r>.pt`` (a dict,
with ``"error"`` if it failed). A rank still running at the deadline is killed, never left
blocking the others, and the test fails naming the deadline. Inside a worker,
:func:`expect_failure` records how a call that every rank must refuse was refused.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from enumdist.engine.errors import ModelStructureError, ShardError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker_main, world: int, outdir: Path, deadline_s: float = 600) -> list[dict]:
    """Run ``worker_main`` on ``world`` spawned ranks; -> each rank's result dict."""
    ctx = mp.spawn(worker_main, args=(world, free_port(), str(outdir)), nprocs=world, join=False)
    deadline = time.monotonic() + deadline_s
    for process in ctx.processes:
        process.join(timeout=max(1.0, deadline - time.monotonic()))
    stuck = [p for p in ctx.processes if p.is_alive()]
    for process in stuck:
        process.kill()
        process.join(timeout=10)
    assert not stuck, f"a rank did not finish within {deadline_s:.0f} s"
    assert all(p.exitcode == 0 for p in ctx.processes), [p.exitcode for p in ctx.processes]
    results = [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for result in results:
        assert "error" not in result, result["error"]
    return results


def expect_failure(fn, errors=(ShardError, ModelStructureError)) -> dict:
    """Call ``fn`` on this rank; -> the ``type`` and ``message`` of the error among ``errors``
    it raised (``type`` None if it returned) and the ``seconds`` it took to fail."""
    start = time.monotonic()
    try:
        fn()
    except errors as exc:
        return {
            "type": type(exc).__name__,
            "message": str(exc),
            "seconds": time.monotonic() - start,
        }
    return {"type": None, "message": "no error", "seconds": time.monotonic() - start}
