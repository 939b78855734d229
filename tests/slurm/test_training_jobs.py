"""Training jobs on the real local SLURM cluster (slurm/cluster-up.sh), 2 ranks each, CPU (gloo):

- an uninterrupted ``sbatch slurm/train.sbatch`` job (devices and nodes from the allocation, no
  ``trainer=ddp_cpu``), with test and decode: the reference;
- the same job sent SIGUSR1 mid-run: it checkpoints at a step boundary, requeues, resumes, and
  its parameters, test loss and decoded Parquet equal the reference's; wandb keeps one run id on
  one continuous step axis;
- a Hydra submitit launcher job sent SIGUSR1 and, after its restart, SIGUSR2: the same.

Nothing may hang: every wait is bounded, and jobs still running on failure are cancelled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tests.pipeline import wandb_records

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("sbatch") is None, reason="sbatch not on PATH (run slurm/cluster-up.sh)"
    ),
]

ROOT = Path(__file__).resolve().parents[2]
SEARCHPATH = f"hydra.searchpath=[file://{ROOT / 'tests' / 'pipeline' / 'conf'}]"
STEPS = 150
# the same training in every job: toy HMM, checkpoints every 10 steps, test and decode at the end
TRAINING = [
    SEARCHPATH,
    "experiment=toy_hmm",
    "logger=wandb",
    "callbacks=with_rank_params",
    "callbacks.progress_bar.refresh_rate=0",
    "callbacks.model_checkpoint.every_n_train_steps=10",
    f"trainer.max_steps={STEPS}",
    "trainer.check_val_every_n_epoch=20",
    "test=true",
    "decode.enabled=true",
    "decode.pictures=false",
    "decode.progress=false",
]
REQUEUE_CHECKPOINT = r"\S+/requeue/requeue-\d+\.ckpt"  # where SlurmRequeue saves (checkpoint_files)
ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def sbatch(run_dir: Path, *overrides: str) -> str:
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--time=00:08:00",
            f"--output={run_dir.parent}/slurm-%j.out",
            "slurm/train.sbatch",
            str(run_dir),
            *TRAINING,
            *overrides,
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def job_state(job_id: str) -> tuple[str, int]:
    """(JobState, Restarts); ("GONE", -1) once slurmctld has forgotten the job."""
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30
    )
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
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what} (job {job_id} cancelled)"
    )


def wait_for_job(job_id: str, timeout: float = 420) -> str:
    finished = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "GONE")
    return wait_until(
        lambda: (s := job_state(job_id)[0]) in finished and s, timeout, job_id, "the job to end"
    )


def checkpoint_step(run_dir: Path) -> int | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        return torch.load(last, weights_only=True)["global_step"] if last.exists() else None
    except (RuntimeError, EOFError, OSError):  # replaced while read
        return None


def signal_mid_run(job_id: str, run_dir: Path, name: str, after_step: int = 0) -> int:
    """Wait for a checkpoint past ``after_step`` (and well before the end), send ``name``, wait for
    the requeue and release the job at once (slurmctld holds a requeued job back ~2 minutes)."""
    restarts = job_state(job_id)[1]
    step = wait_until(
        lambda: (
            (s := checkpoint_step(run_dir)) is not None and after_step + 10 <= s < STEPS - 60 and s
        ),
        300,
        job_id,
        f"a checkpoint past step {after_step + 10}",
    )
    subprocess.run(["scancel", f"--signal={name}", job_id], timeout=30, check=True)
    wait_until(
        lambda: job_state(job_id)[1] > restarts, 120, job_id, f"the job to requeue itself on {name}"
    )
    # REQUEUED / COMPLETING first, then PENDING (held back) or already RUNNING again
    wait_until(
        lambda: job_state(job_id)[0] in ("PENDING", "RUNNING"), 120, job_id, "the requeued job"
    )
    if job_state(job_id)[0] == "PENDING":
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], timeout=30)
    return step


def logs(directory: Path, pattern: str = "slurm-*.out") -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(directory.rglob(pattern)))


def rank_params(run_dir: Path) -> list[dict]:
    return [torch.load(run_dir / "final_params" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def assert_same_parameters(a: dict, b: dict, rtol: float = 0.0) -> None:
    assert set(a["state_dict"]) == set(b["state_dict"])
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=rtol, atol=0)


def assert_same_results(run_dir: Path, reference: Path) -> None:
    """Parameters, test loss and decoded paths of a requeued job equal the uninterrupted job's."""
    rank0, rank1 = rank_params(run_dir)
    assert rank0["step"] == rank1["step"] == STEPS
    assert_same_parameters(rank0, rank1)
    assert_same_parameters(rank0, rank_params(reference)[0], rtol=1e-6)
    metrics, expected = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    assert metrics["test/loss_per_obs"] == pytest.approx(expected["test/loss_per_obs"], rel=1e-6), (
        metrics,
        expected,
    )
    tables = [sorted(d.glob("decoded/*/decoded.parquet")) for d in (run_dir, reference)]
    assert len(tables[0]) == len(tables[1]) == 1, tables
    decoded, reference_decoded = (pq.read_table(t[0]) for t in tables)
    state_columns = [
        c for c in reference_decoded.column_names if "log" not in c and "prob" not in c
    ]
    assert decoded.select(state_columns).equals(reference_decoded.select(state_columns))


def assert_one_wandb_run_on_one_step_axis(run_dir: Path, segments: int) -> None:
    files = wandb_records.run_files(run_dir)
    assert len(files) == segments, files
    assert {wandb_records.run_info(f)["id"] for f in files} == {
        (run_dir / "wandb" / "run-id").read_text()
    }
    steps = [
        [r["trainer/global_step"] for r in wandb_records.history(f) if "train/loss_per_obs" in r]
        for f in files
    ]
    assert all(steps), steps  # no segment is lost (each .wandb file holds its history)
    flat = [s for segment in steps for s in segment]
    # each restart resumes from the checkpoint taken at the signal: no step is missing, and the
    # steps logged again after a resume are only those after that checkpoint
    assert sorted(set(flat)) == list(range(STEPS)), (flat[:5], flat[-5:])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """One plain sbatch job: the reference for the other tests."""
    run_dir = tmp_path_factory.mktemp("sbatch") / "run"
    job_id = sbatch(run_dir)
    state = wait_for_job(job_id)
    assert state in ("COMPLETED", "GONE"), f"job {job_id}: {state}\n{logs(run_dir.parent)}"
    return run_dir


def test_sbatch_job_derives_devices_from_the_allocation_and_ends_identical_on_both_ranks(
    uninterrupted,
):
    text = logs(uninterrupted.parent)
    assert (
        "trainer.devices=2 trainer.num_nodes=1" in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text
    ), text
    rank0, rank1 = rank_params(uninterrupted)
    assert rank0["step"] == rank1["step"] == STEPS
    assert_same_parameters(rank0, rank1)
    assert (uninterrupted / "checkpoints" / "last.ckpt").is_file()
    assert "test/loss_per_obs" in json.loads((uninterrupted / "metrics.json").read_text())
    assert_one_wandb_run_on_one_step_axis(uninterrupted, segments=1)


@pytest.fixture
def cancel_on_failure():
    """Jobs registered here are cancelled when the test ends (a no-op for finished jobs)."""
    jobs: list[str] = []
    yield jobs
    for job_id in jobs:
        subprocess.run(["scancel", job_id], timeout=30)


def test_sigusr1_checkpoints_requeues_and_the_restart_tests_the_trained_weights(
    uninterrupted, tmp_path, cancel_on_failure
):
    """What ``--signal=SIGUSR1@90`` does near the time limit, sent now. The restart resumes from
    ``requeue/requeue-<step>.ckpt``; its test loss must come from the trained weights, not from that
    checkpoint (Lightning's ``test(ckpt_path=None)`` under SLURM would restore it)."""
    run_dir = tmp_path / "run"
    job_id = sbatch(run_dir)
    cancel_on_failure.append(job_id)
    signal_mid_run(job_id, run_dir, "USR1")
    state = wait_for_job(job_id)
    text = logs(tmp_path)
    assert state in ("COMPLETED", "GONE"), f"job {job_id}: {state}\n{text}"
    saved = re.search(rf"SlurmRequeue: SIGUSR1: saved ({REQUEUE_CHECKPOINT})", text)
    assert saved and "restart 1" in text, text
    assert f"Restoring states from the checkpoint path at {saved.group(1)}" in text, text
    assert_same_results(run_dir, uninterrupted)
    assert_one_wandb_run_on_one_step_axis(run_dir, segments=2)


def test_submitit_job_requeues_on_usr1_and_usr2_and_prints_its_result(uninterrupted, tmp_path):
    sweep = tmp_path / "sweep"
    name = f"enumdist-test-submitit-{os.getpid()}"
    cmd = [
        sys.executable,
        "-m",
        "enumdist.train",
        "-m",
        *TRAINING,
        "launcher=slurm_cpu",
        "trainer.devices=2",
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.timeout_min=8",
        "hydra.launcher.mem_gb=1",
        f"hydra.launcher.name={name}",
    ]
    launcher = subprocess.Popen(
        cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    job_id = "none"
    try:

        def submitted():
            out = subprocess.run(
                ["squeue", "-h", "-o", "%i", "-n", name], capture_output=True, text=True, timeout=30
            )
            return out.stdout.split()[0] if out.stdout.split() else None

        job_id = wait_until(submitted, 120, name, "the submitit job to be submitted")
        first = signal_mid_run(job_id, sweep / "0", "USR1")
        signal_mid_run(job_id, sweep / "0", "USR2", after_step=first)
        output, _ = launcher.communicate(timeout=420)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            subprocess.run(["scancel", job_id], timeout=30)
    job_logs = logs(sweep, "*_0_log.out") + logs(sweep, "*_0_log.err")
    assert launcher.returncode == 0, f"{output[-3000:]}\n{job_logs[-5000:]}"
    for name in ("SIGUSR1", "SIGUSR2"):
        saved = re.search(rf"SlurmRequeue: {name}: saved ({REQUEUE_CHECKPOINT})", job_logs)
        assert saved, job_logs[-5000:]
        assert f"Restoring states from the checkpoint path at {saved.group(1)}" in job_logs
    assert not re.search(
        r"SLURM auto-requeueing enabled", job_logs
    )  # Lightning's handler stays off
    assert_same_results(sweep / "0", uninterrupted)
    assert_one_wandb_run_on_one_step_axis(sweep / "0", segments=3)
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert f"job 0: test/loss_per_obs {metrics['test/loss_per_obs']:.5f}" in output, output[-3000:]
    assert f"run directory {(sweep / '0').resolve()}" in output, output[-3000:]
