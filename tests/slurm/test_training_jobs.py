"""Training jobs on the real local SLURM cluster (slurm/cluster-up.sh): a 2-task CPU DDP job via
``sbatch slurm/train.sbatch``, one via the Hydra submitit launcher, and a requeued job that must
resume from its last checkpoint and end where an uninterrupted job ends.

Nothing may hang: every wait is bounded, and jobs still running on failure are cancelled.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="sbatch not on PATH (run slurm/cluster-up.sh)"),
]

ROOT = Path(__file__).resolve().parents[2]
SEARCHPATH = f"hydra.searchpath=[file://{ROOT / 'tests' / 'pipeline' / 'conf'}]"
STEPS = 150
# the same training in every job: toy HMM, 2 ranks, checkpoints every 10 steps
TRAINING = [SEARCHPATH, "experiment=toy_hmm", "trainer=ddp_cpu", "trainer.devices=2", "logger=csv",
            "callbacks=with_rank_params", "callbacks.progress_bar.refresh_rate=0",
            "callbacks.model_checkpoint.every_n_train_steps=10", f"trainer.max_steps={STEPS}",
            "trainer.check_val_every_n_epoch=1000", "test=false"]
ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def sbatch(run_dir: Path, *overrides: str) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", "--time=00:06:00", f"--output={run_dir.parent}/slurm-%j.out",
         "slurm/train.sbatch", str(run_dir), *TRAINING, *overrides],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def job_state(job_id: str) -> tuple[str, int]:
    """(JobState, Restarts); ("GONE", -1) once slurmctld has forgotten the job."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return "GONE", -1
    state = re.search(r"JobState=(\S+)", out.stdout).group(1)
    restarts = int(re.search(r"Restarts=(\d+)", out.stdout).group(1))
    return state, restarts


def wait_until(predicate, timeout: float, job_id: str, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    subprocess.run(["scancel", job_id], timeout=30)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (job {job_id} cancelled)")


def wait_for_job(job_id: str, timeout: float = 300) -> str:
    finished = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "GONE")
    return wait_until(lambda: (s := job_state(job_id)[0]) in finished and s, timeout, job_id, "the job to end")


def logs(directory: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in directory.glob("slurm-*.out"))


def rank_params(run_dir: Path) -> list[dict]:
    return [torch.load(run_dir / "final_params" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def assert_same_parameters(a: dict, b: dict, rtol: float = 0.0) -> None:
    assert set(a["state_dict"]) == set(b["state_dict"])
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=rtol, atol=0)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """One plain sbatch job: the reference for the other tests."""
    run_dir = tmp_path_factory.mktemp("sbatch") / "run"
    job_id = sbatch(run_dir)
    state = wait_for_job(job_id)
    assert state in ("COMPLETED", "GONE"), f"job {job_id}: {state}\n{logs(run_dir.parent)}"
    return run_dir


def test_sbatch_ddp_job_ends_with_identical_parameters_on_both_ranks(uninterrupted):
    rank0, rank1 = rank_params(uninterrupted)
    assert rank0["step"] == rank1["step"] == STEPS
    assert_same_parameters(rank0, rank1)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs(uninterrupted.parent)
    assert (uninterrupted / "checkpoints" / "last.ckpt").is_file()


@pytest.fixture
def cancel_on_failure():
    """Jobs registered here are cancelled when the test ends (a no-op for finished jobs)."""
    jobs: list[str] = []
    yield jobs
    for job_id in jobs:
        subprocess.run(["scancel", job_id], timeout=30)


def test_requeued_job_resumes_and_matches_the_uninterrupted_job(uninterrupted, tmp_path, cancel_on_failure):
    run_dir = tmp_path / "run"
    job_id = sbatch(run_dir)
    cancel_on_failure.append(job_id)

    def checkpoint_mid_run():
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.exists():
            return False
        step = torch.load(last, weights_only=True)["global_step"]
        return 10 <= step < STEPS - 40 and step

    step = wait_until(checkpoint_mid_run, 240, job_id, "a mid-run checkpoint")
    out = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    # slurmctld holds a requeued job back for ~2 minutes (BeginTime); let it start again now
    wait_until(lambda: job_state(job_id)[0] == "PENDING", 60, job_id, "the requeued job to be pending")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], timeout=30, check=True)
    state = wait_for_job(job_id)
    text = logs(tmp_path)
    assert state in ("COMPLETED", "GONE"), f"job {job_id}: {state}\n{text}"
    assert "restart 1" in text, text
    assert "Restoring states from the checkpoint path" in text or "Restored all states" in text, text
    rank0, rank1 = rank_params(run_dir)
    assert rank0["step"] == STEPS and step < STEPS
    assert_same_parameters(rank0, rank1)
    assert_same_parameters(rank0, rank_params(uninterrupted)[0], rtol=1e-6)


def test_submitit_launcher_job_ends_with_identical_parameters_on_both_ranks(uninterrupted, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "enumdist.train", "-m", *TRAINING, "launcher=slurm_cpu",
           f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=6", "hydra.launcher.mem_gb=1"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=360)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", "--name=train"], timeout=30)
        raise
    job_logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sweep.rglob("*.err"))
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}\n{job_logs}"
    rank0, rank1 = rank_params(sweep / "0")
    assert rank0["step"] == rank1["step"] == STEPS
    assert_same_parameters(rank0, rank1)
    assert_same_parameters(rank0, rank_params(uninterrupted)[0], rtol=1e-6)


def test_sigusr1_before_the_time_limit_checkpoints_requeues_and_resumes(uninterrupted, tmp_path, cancel_on_failure):
    """What ``--signal=SIGUSR1@90`` does near the time limit, sent now: Lightning saves
    ``hpc_ckpt_*.ckpt`` and requeues the job; the restart resumes from it (ckpt_path=last)."""
    run_dir = tmp_path / "run"
    job_id = sbatch(run_dir)
    cancel_on_failure.append(job_id)

    def training_mid_run():
        last = run_dir / "checkpoints" / "last.ckpt"
        return last.exists() and 10 <= torch.load(last, weights_only=True)["global_step"] < STEPS - 40

    wait_until(training_mid_run, 240, job_id, "a mid-run checkpoint")
    subprocess.run(["scancel", "--signal=USR1", job_id], timeout=30, check=True)
    wait_until(lambda: job_state(job_id)[1] >= 1, 90, job_id, "Lightning to requeue the job")
    wait_until(lambda: job_state(job_id)[0] == "PENDING" or job_state(job_id)[0] == "RUNNING", 60, job_id,
               "the requeued job")
    if job_state(job_id)[0] == "PENDING":
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], timeout=30)
    state = wait_for_job(job_id)
    text = logs(tmp_path)
    assert state in ("COMPLETED", "GONE"), f"job {job_id}: {state}\n{text}"
    assert list(run_dir.glob("hpc_ckpt_*.ckpt")), text
    assert "SlurmRequeue: saved hpc_ckpt_1.ckpt" in text and "restart 1" in text, text
    assert "Restoring states from the checkpoint path at " + str(run_dir / "hpc_ckpt_1.ckpt") in text, text
    rank0, rank1 = rank_params(run_dir)
    assert rank0["step"] == STEPS
    assert_same_parameters(rank0, rank1)
    assert_same_parameters(rank0, rank_params(uninterrupted)[0], rtol=1e-6)
