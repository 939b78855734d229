"""The memory preflight bounds the whole call's peak, for every entry point (issue 11, item 10).

``memory.peak_bytes`` estimates inputs + what the call keeps alive (products saved for the
backward pass or a decoding tape) + the largest step's working set. A run it admits must stay
within the budget -- measured as peak RSS growth in a fresh process -- and a run over the budget
must be refused before anything large is allocated.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from enumdist.engine.errors import MemoryBudgetError
from tests.engine.memory_probe import run

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = [
    "loss",
    "loss_and_grads",
    "compute_marginals",
    "sample_posterior",
    "infer_discrete_0",
    "infer_discrete_1",
]


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES)
def test_admitted_runs_stay_within_the_budget_and_refused_ones_allocate_nothing(entry):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "tests.engine.memory_probe", entry],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    print(entry, {k: f"{v / 2**20:.1f} MiB" for k, v in probe.items()})
    # refused: under a budget 250x every factor but below the elimination, nothing big allocated
    assert probe["refused_growth"] < probe["product_bytes"] / 4
    # admitted with memory_budget = the estimate: the real peak stays under it ...
    assert probe["admitted_growth"] <= probe["estimate"]
    # ... and the estimate is not so cautious that it refuses what would fit many times over
    assert probe["estimate"] <= 5 * probe["admitted_growth"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_every_entry_point_refuses_a_contraction_over_the_budget(entry):
    """Each factor is 32 MiB, the elimination 61 GiB: refused at once (infer_discrete had no
    preflight and tried to allocate it)."""
    torch.set_default_dtype(torch.float64)
    with pytest.raises(MemoryBudgetError, match=r"shape \(2000, 2000, 2000\).*peak at about"):
        run(entry, 2000, 2**30)
