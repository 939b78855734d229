"""Submitting ``slurm/train.sbatch`` from the checkout, as the SLURM tests do."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def submit_training(
    run_dir: Path, options: list[str], overrides: list[str], env: dict[str, str]
) -> str:
    """``sbatch --parsable <options> slurm/train.sbatch <run_dir> <overrides>``; -> the job id.

    The job's log goes to ``<run_dir's parent>/slurm-<job id>.out``."""
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            *options,
            f"--output={run_dir.parent}/slurm-%j.out",
            "slurm/train.sbatch",
            str(run_dir),
            *overrides,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def poll(predicate, timeout: float, what: str, on_timeout=lambda: ""):
    """``predicate()``'s first truthy value, asked once a second; after ``timeout`` seconds an
    AssertionError naming ``what``, followed by what ``on_timeout()`` returns (it may also clean
    up, e.g. cancel the job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{on_timeout()}")
