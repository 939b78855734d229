"""End-to-end training: the CLI, the run-directory layout, resume, loggers, sweeps."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from enumdist.pipeline.callbacks import AtomicCheckpointIO
from tests.pipeline.conftest import compose_config, run_cli


def train_with(run_dir, *overrides: str):
    """``enumdist.train.train`` in this process on a composed config (quiet, no logger)."""
    from enumdist.train import train

    cfg = compose_config(
        "logger=none", "callbacks.progress_bar.refresh_rate=0", *overrides, run_dir=run_dir
    )
    return train(cfg)


def final_state(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def test_cli_run_writes_the_run_directory_layout(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        "experiment=toy_hmm",
        "logger=wandb",
        f"hydra.run.dir={run_dir}",
        "trainer.max_steps=4",
        "optim=clipped_adam",
    )  # its betas list must not reach the checkpoint as a ListConfig
    assert "test loss per observation" in result.stdout
    assert f"run directory: {run_dir}" in result.stdout and "train_history.png" in result.stdout
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    checkpoint = final_state(run_dir)  # weights-only loadable
    assert checkpoint["global_step"] == 4
    assert set(checkpoint["state_dict"]) == {
        "model.initial_unconstrained",
        "model.transition_unconstrained",
        "model.emission_unconstrained",
    }
    assert isinstance(checkpoint["hyper_parameters"], dict)
    with open(run_dir / "train_history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) == {"step", "loss_per_obs", "valid_loss_per_obs"}
    # check_val_every_n_epoch=3, one step per epoch: the one validation follows step 3
    assert [bool(r["valid_loss_per_obs"]) for r in rows] == [False, False, True, False]
    assert list((run_dir / "wandb").glob("offline-run-*")), (
        "wandb must run offline under the run dir"
    )
    assert list((run_dir / "wandb").rglob("media/images/pictures_*.png")), "pictures go to wandb"
    assert (
        "Epoch 3, step: 100%|██████████| 4/4" in result.stdout + result.stderr
    )  # one bar over max_steps


def test_guide_parameters_are_under_guide_prefix(tmp_path):
    train_with(
        tmp_path,
        "experiment=toy_hmm",
        "elbo=pyro",
        "data=toy_points",
        "data.load._target_=tests.pipeline.toy.toy_points_2d",
        "model=gaussian_mixture",
        "trainer.max_steps=2",
    )
    keys = set(final_state(tmp_path)["state_dict"])
    assert keys and all(k.startswith("guide.") for k in keys), keys


def test_resumed_run_ends_with_the_same_parameters(tmp_path):
    common = [
        "experiment=regime_mixture",
        "elbo=pyro",
        "optim=adam_exponential",
        "callbacks.model_checkpoint.every_n_train_steps=1",
    ]
    train_with(tmp_path / "straight", *common, "trainer.max_steps=6")
    train_with(tmp_path / "resumed", *common, "trainer.max_steps=3")
    assert final_state(tmp_path / "resumed")["global_step"] == 3
    train_with(tmp_path / "resumed", *common, "trainer.max_steps=6", "ckpt_path=last")
    straight, resumed = final_state(tmp_path / "straight"), final_state(tmp_path / "resumed")
    assert resumed["global_step"] == 6
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-6, atol=0)
    assert (
        straight["optimizer_states"][0]["state"][0]["step"]
        == resumed["optimizer_states"][0]["state"][0]["step"]
    )
    with open(tmp_path / "resumed" / "train_history.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]


def test_ckpt_path_last_without_checkpoint_starts_fresh(tmp_path):
    train_with(tmp_path, "experiment=toy_hmm", "elbo=pyro", "trainer.max_steps=2", "ckpt_path=last")
    assert final_state(tmp_path)["global_step"] == 2


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"a": torch.ones(2)}, path)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError):
        AtomicCheckpointIO().save_checkpoint({"a": torch.zeros(2)}, path)
    assert torch.load(path, weights_only=True)["a"].tolist() == [1.0, 1.0]  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last.ckpt",
        "last.ckpt.sha256",
    ]  # no temporary


def test_csv_logger_works_without_wandb(tmp_path):
    blocker = tmp_path / "block"
    (blocker / "wandb").mkdir(parents=True)
    (blocker / "wandb" / "__init__.py").write_text("raise ImportError('wandb is not installed')\n")
    run_dir = tmp_path / "run"
    import os

    result = run_cli(
        "experiment=toy_hmm",
        "elbo=pyro",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
        "trainer.max_steps=2",
        env={"PYTHONPATH": f"{blocker}{os.pathsep}{sys.path[0] or '.'}"},
    )
    assert (
        run_dir / "csv" / "metrics.csv"
    ).is_file() and "test loss per observation" in result.stdout
    with open(run_dir / "csv" / "metrics.csv") as f:
        header = f.readline()
    assert "train/loss_per_obs" in header and "train/obs_per_s" in header and "lr-" in header


def test_multirun_sweep_on_cpu(tmp_path):
    run_cli(
        "-m",
        "experiment=toy_hmm",
        "elbo=pyro",
        "logger=none",
        "trainer.max_steps=2",
        "optim.optimizer.lr=0.01,0.1",
        f"hydra.sweep.dir={tmp_path}",
    )
    for job in ("0", "1"):
        assert (tmp_path / job / "checkpoints" / "last.ckpt").is_file()
        assert (tmp_path / job / ".hydra" / "config.yaml").is_file()
    lrs = [
        final_state(tmp_path / job)["optimizer_states"][0]["param_groups"][0]["lr"] for job in "01"
    ]
    assert lrs == [0.01, 0.1]


def test_decode_enabled_without_decoding_stage_is_a_clear_error(tmp_path, monkeypatch):
    import enumdist.decoding
    from enumdist.pipeline.checks import ConfigError

    if hasattr(enumdist.decoding, "run_decoding"):
        monkeypatch.delattr(enumdist.decoding, "run_decoding")
    with pytest.raises(ConfigError, match="decode.enabled=true but enumdist.decoding.run_decoding"):
        train_with(tmp_path, "experiment=toy_hmm", "elbo=pyro", "decode.enabled=true")


@pytest.mark.slow
def test_cli_ddp_strategy_on_two_cpu_processes(tmp_path):
    """``trainer=ddp_cpu`` (strategy=ddp): Lightning re-executes the command for rank 1."""
    run_dir = tmp_path / "run"
    result = run_cli(
        "experiment=toy_hmm",
        "trainer=ddp_cpu",
        "logger=csv",
        "callbacks=with_rank_params",
        f"hydra.run.dir={run_dir}",
        "trainer.max_steps=3",
        timeout=300,
    )
    rank0, rank1 = (
        torch.load(run_dir / "final_params" / f"rank{r}.pt", weights_only=True) for r in (0, 1)
    )
    assert rank0["step"] == rank1["step"] == 3
    for key, value in rank0["state_dict"].items():
        assert torch.equal(value, rank1["state_dict"][key])
    assert result.stdout.count("test loss per observation") == 1  # only rank 0 speaks


def test_decode_enabled_runs_the_decoding_stage_and_lists_its_pictures(tmp_path, capsys):
    pytest.importorskip("enumdist.decoding").run_decoding  # noqa: B018 - the stage must exist
    train_with(
        tmp_path,
        "experiment=toy_hmm",
        "elbo=pyro",
        "trainer.max_steps=2",
        "decode.enabled=true",
        "decode.progress=false",
    )
    out = capsys.readouterr().out
    pictures = [line.split()[-1] for line in out.splitlines() if line.strip().startswith("picture")]
    assert len(pictures) >= 2 and all(Path(p).is_file() for p in pictures), out
