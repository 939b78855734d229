"""The one way the project starts a process group (``enumdist.process_group``)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_helper_imports_dynamo_first():
    """The gloo teardown race needs ``torch._dynamo`` imported before ``init_process_group``."""
    code = (
        "import sys; import enumdist.process_group; import enumdist.pipeline.module; "
        "print('torch._dynamo' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.stdout.strip() == "True"


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist

    from enumdist.process_group import process_group

    with process_group("gloo", rank=rank, world_size=2, timeout_s=60):
        value = torch.tensor([float(rank + 1)])
        dist.all_reduce(value)
        parameter = torch.nn.Parameter(torch.ones(1))
        parameter.grad = value.clone()
        torch.optim.Adam([parameter], lr=0.1).step()  # imports torch._dynamo if nothing did before
        Path(out, f"rank{rank}").write_text(str(float(value)))


@pytest.mark.slow
def test_two_gloo_ranks_reduce_and_exit_cleanly(tmp_path):
    from enumdist.process_group import free_port

    context = multiprocessing.get_context("spawn")
    port = free_port()
    processes = [context.Process(target=_rank, args=(r, port, str(tmp_path))) for r in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=300)
    assert [p.exitcode for p in processes] == [0, 0]  # -6 would be the SIGABRT at exit
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["3.0", "3.0"]
