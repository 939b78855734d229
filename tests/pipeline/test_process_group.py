"""A stopped rank makes the others fail within ``trainer.process_group_timeout_s``, naming it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from enumdist.pipeline.strategies import lightning_strategy
from enumdist.process_group import DEFAULT_TIMEOUT_S
from tests.pipeline.conftest import ROOT, SEARCHPATH, compose_config


def test_the_timeout_is_in_the_trainer_config_and_reaches_the_ddp_strategy(tmp_path):
    cfg = compose_config("trainer=ddp_cpu", run_dir=tmp_path)
    assert cfg.trainer.process_group_timeout_s == DEFAULT_TIMEOUT_S <= 600
    for name in ("ddp", "ddp_spawn"):
        assert lightning_strategy(name, 12.0).collective_timeout_s == 12.0
    assert lightning_strategy("auto", 12.0) == "auto"


@pytest.mark.slow
def test_a_stopped_rank_makes_the_other_exit_naming_the_timeout_and_the_rank(tmp_path):
    """Rank 1 SIGSTOPs itself at step 2; rank 0 must fail within the 15 s timeout, say why, and
    take its launched rank down with it (a stopped child would hold the pipes open forever)."""
    pid_file, log = tmp_path / "stopped.pid", tmp_path / "stderr.txt"
    args = [
        "experiment=toy_hmm",
        "trainer=ddp_cpu",
        "logger=none",
        "test=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        "trainer.max_steps=6",
        "trainer.process_group_timeout_s=15",
        "+callbacks.stop._target_=tests.pipeline.toy.StopRankAtStep",
        "+callbacks.stop.rank=1",
        "+callbacks.stop.step=2",
        f"+callbacks.stop.pid_file={pid_file}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "enumdist.train", SEARCHPATH, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            returncode = process.wait(timeout=300)
        finally:
            process.kill()
            stopped_alive = pid_file.exists() and _kill(int(pid_file.read_text()))
    text = log.read_text()
    assert pid_file.exists(), text[-3000:]
    assert returncode != 0
    assert "trainer.process_group_timeout_s=15 s for rank 1" in text, text[-3000:]
    assert "ProcessGroupTimeout: rank 0 of 2" in text
    assert not stopped_alive, "the stopped rank outlived the run"


def _kill(pid: int) -> bool:
    """SIGKILL ``pid``; -> whether it was still running (a zombie left for init to reap is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    os.kill(pid, signal.SIGKILL)
    return state != "Z"
