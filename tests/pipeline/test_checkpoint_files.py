"""Checkpoints are verified, chosen by step and loaded weights-only on every path; what a kill
leaves behind is tidied on resume."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from enumdist.pipeline.checkpoint_files import (
    AtomicCheckpointIO,
    CheckpointError,
    load_checkpoint,
    resolve_ckpt_path,
    save_checkpoint,
    sidecar_of,
)
from tests.pipeline.test_train import final_state, train_with

TOY = ["experiment=toy_hmm", "elbo=pyro", "test=false"]


class CreatesFile:
    """Unpickling this calls ``open(marker, "w")``: the file appears iff the pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant_payload(path, marker, step=9):
    torch.save({"state_dict": {}, "global_step": step, "payload": CreatesFile(marker)}, path)


def flip_bytes(path, offset_fraction=0.5, count=4):
    data = bytearray(path.read_bytes())
    at = int(len(data) * offset_fraction)
    data[at : at + count] = bytes(b ^ 0xFF for b in data[at : at + count])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy run of 4 steps: checkpoints/step4.ckpt and last.ckpt (both at step 4), with sidecars."""
    run_dir = tmp_path_factory.mktemp("trained")
    train_with(run_dir, *TOY, "trainer.max_steps=4")
    return run_dir


def copy_run(source, target):
    import shutil

    shutil.copytree(source, target)
    return target


def test_every_checkpoint_has_a_sidecar_recording_its_step(trained):
    for name in ("last.ckpt", "step4.ckpt"):
        assert sidecar_of(trained / "checkpoints" / name).is_file()
        assert load_checkpoint(trained / "checkpoints" / name)["global_step"] == 4


@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty", "garbage"])
def test_damaged_checkpoint_is_refused_by_name(trained, tmp_path, damage):
    path = copy_run(trained, tmp_path / "run") / "checkpoints" / "last.ckpt"
    if damage == "flipped":  # inside the tensors' bytes: torch.load alone would accept it
        flip_bytes(path)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt"):
        load_checkpoint(path)
    sidecar_of(path).unlink()  # without a sidecar: still a clear error, never a raw pickle/OS error
    if damage != "flipped":
        with (
            pytest.raises(CheckpointError, match=f"checkpoint {path} is (empty|not a readable)"),
            pytest.warns(UserWarning, match="no .sha256 sidecar"),
        ):
            load_checkpoint(path)


def test_resume_falls_back_to_the_newest_intact_checkpoint_and_says_so(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path / "run")
    flip_bytes(run_dir / "checkpoints" / "last.ckpt")
    with pytest.warns(
        UserWarning, match=r"skipping .*last.ckpt \(step 4\), falling back .*is corrupt"
    ):
        assert resolve_ckpt_path("last", run_dir) == str(run_dir / "checkpoints" / "step4.ckpt")
    flip_bytes(run_dir / "checkpoints" / "step4.ckpt")
    with pytest.warns(UserWarning, match="step4.ckpt is corrupt"):
        assert resolve_ckpt_path("last", run_dir) is None  # nothing intact: a fresh start
    with pytest.raises(CheckpointError, match="step4.ckpt is corrupt"):
        resolve_ckpt_path(str(run_dir / "checkpoints" / "step4.ckpt"), run_dir)  # named: refused


def test_decode_refuses_a_corrupt_checkpoint_by_name(trained, tmp_path, monkeypatch):
    from enumdist.decoding import run_decoding

    monkeypatch.setenv(
        "ENUMDIST_ALLOW_TARGETS", "tests.pipeline.toy.toy_sequences"
    )  # our own toy data

    run_dir = copy_run(trained, tmp_path / "run")
    flip_bytes(run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="last.ckpt is corrupt"):
        run_decoding(run_dir, {"progress": False, "pictures": False})


def test_last_is_chosen_by_recorded_step_not_by_mtime(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path / "run")
    older = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    older["global_step"] = 2
    save_checkpoint(older, run_dir / "hpc_ckpt_1.ckpt")  # written last: the newest mtime
    assert resolve_ckpt_path("last", run_dir) == str(run_dir / "checkpoints" / "last.ckpt")


def test_planted_pickle_never_runs_on_resume_even_with_torch_forced_to_unpickle(
    trained, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    run_dir = copy_run(trained, tmp_path / "run")
    marker = tmp_path / "pwned"
    plant_payload(run_dir / "hpc_ckpt_9.ckpt", marker)  # the newest mtime, the highest hpc number
    with pytest.warns(UserWarning, match="ignoring .*hpc_ckpt_9.ckpt: it has no .sha256 sidecar"):
        assert resolve_ckpt_path("last", run_dir) == str(run_dir / "checkpoints" / "last.ckpt")
    # Lightning's own loads (an explicit ckpt_path, SLURM's "hpc" auto-resume) go through the plugin
    with (
        pytest.raises(CheckpointError, match="hpc_ckpt_9.ckpt is not a readable weights-only"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        AtomicCheckpointIO().load_checkpoint(run_dir / "hpc_ckpt_9.ckpt")
    with pytest.raises(CheckpointError, match="hpc_ckpt_9.ckpt"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_with(run_dir, *TOY, "trainer.max_steps=6", f"ckpt_path={run_dir / 'hpc_ckpt_9.ckpt'}")
    assert not marker.exists(), "the pickle payload ran"


def test_resume_removes_temporaries_and_orphan_checkpoints_a_kill_left(tmp_path, capsys):
    run_dir = tmp_path / "run"  # trained here: ModelCheckpoint's state names its own directory
    train_with(run_dir, *TOY, "trainer.max_steps=4")
    orphan = load_checkpoint(run_dir / "checkpoints" / "step4.ckpt")
    orphan["global_step"] = 2
    save_checkpoint(orphan, run_dir / "checkpoints" / "step2.ckpt")  # beyond save_top_k=1
    leftovers = [
        run_dir / ".train_history.csv.abc123.tmp",
        run_dir / "checkpoints" / ".last.ckpt.xyz.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half a write")
    train_with(run_dir, *TOY, "trainer.max_steps=6", "ckpt_path=last")
    out = capsys.readouterr().out
    assert "removed" in out and "step2.ckpt" in out
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == [
        "last.ckpt",
        "step6.ckpt",
    ]
    assert final_state(run_dir)["global_step"] == 6
