"""Shared helpers of the pipeline tests: compose configs, run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "enumdist" / "conf"
TEST_CONF = Path(__file__).resolve().parent / "conf"
SEARCHPATH = f"hydra.searchpath=[file://{TEST_CONF}]"

torch.set_num_threads(1)


def compose_config(
    *overrides: str, run_dir: str | os.PathLike | None = None, return_hydra_config=False
):
    """The composed training config (test configs on the search path)."""
    extra = [f"paths.run_dir={run_dir}"] if run_dir is not None else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train",
            overrides=[SEARCHPATH, *overrides, *extra],
            return_hydra_config=return_hydra_config,
        )


def run_cli(*args: str, timeout: float = 240, env: dict | None = None, check: bool = True):
    """``python -m enumdist.train <args>`` in the repo root; returns the CompletedProcess."""
    full_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    flags = [a for a in args if a.startswith("-")]  # hydra wants flags before overrides
    overrides = [a for a in args if not a.startswith("-")]
    result = subprocess.run(
        [sys.executable, "-m", "enumdist.train", *flags, SEARCHPATH, *overrides],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"
