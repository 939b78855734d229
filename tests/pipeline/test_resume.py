"""Resuming continues the run exactly: a run stopped (or killed) after any step and resumed with
``ckpt_path=last`` ends with the parameters of the uninterrupted run, mid-epoch stops included,
on one process and on two (ddp_spawn, gloo)."""

from __future__ import annotations

import pytest
import torch

from tests.pipeline.conftest import run_cli
from tests.pipeline.test_train import final_state, train_with

# 12 sequences in minibatches of 3: 4 steps per epoch, so steps 2, 5 and 6 stop mid-epoch
MINIBATCHED = [
    "experiment=toy_hmm",
    "elbo=pyro",
    "data.batch_size=3",
    "test=false",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "trainer.check_val_every_n_epoch=1000",
]
STEPS = 8


def assert_same_parameters(straight, resumed):
    assert resumed["global_step"] == straight["global_step"] == STEPS
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(
            resumed["state_dict"][key], value, rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}"
        )


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    train_with(run_dir, *MINIBATCHED, f"trainer.max_steps={STEPS}")
    return final_state(run_dir)


@pytest.mark.parametrize("stop", [2, 4, 5])
def test_resume_after_a_stop_mid_epoch_or_at_its_end_continues_exactly(straight, tmp_path, stop):
    train_with(tmp_path, *MINIBATCHED, f"trainer.max_steps={stop}")
    assert final_state(tmp_path)["global_step"] == stop
    train_with(tmp_path, *MINIBATCHED, f"trainer.max_steps={STEPS}", "ckpt_path=last")
    assert_same_parameters(straight, final_state(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("kill", [6])  # mid-way through the second epoch
def test_resume_after_kill_9_mid_epoch_continues_exactly(straight, tmp_path, kill):
    """SIGKILL at the start of step ``kill + 1``, after the checkpoint of step ``kill`` was written."""
    result = run_cli(
        *MINIBATCHED,
        "logger=none",
        f"hydra.run.dir={tmp_path}",
        f"trainer.max_steps={STEPS}",
        "+callbacks.kill._target_=tests.pipeline.toy.KillAtStep",
        f"+callbacks.kill.step={kill}",
        check=False,
    )
    assert result.returncode == -9, result.stderr[-2000:]
    assert final_state(tmp_path)["global_step"] == kill
    train_with(tmp_path, *MINIBATCHED, f"trainer.max_steps={STEPS}", "ckpt_path=last")
    assert_same_parameters(straight, final_state(tmp_path))


@pytest.mark.slow
def test_two_rank_resume_mid_epoch_continues_exactly(tmp_path):
    ddp = [
        *MINIBATCHED,
        "trainer=ddp_cpu",
        "trainer.strategy=ddp_spawn",
        "callbacks=with_rank_params",
        "data.batch_size=2",
    ]  # global batches of 4: 3 steps per epoch, a stop at 4 is mid-epoch
    train_with(tmp_path / "straight", *ddp, f"trainer.max_steps={STEPS}")
    train_with(tmp_path / "resumed", *ddp, "trainer.max_steps=4")
    train_with(tmp_path / "resumed", *ddp, f"trainer.max_steps={STEPS}", "ckpt_path=last")
    for rank in (0, 1):
        straight, resumed = (
            torch.load(tmp_path / run / "final_params" / f"rank{rank}.pt", weights_only=True)
            for run in ("straight", "resumed")
        )
        assert resumed["step"] == straight["step"] == STEPS
        for key, value in straight["state_dict"].items():
            torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0)
