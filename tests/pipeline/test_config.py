"""Config composition and the clear errors a bad config must give (each names the key)."""

import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from enumdist.pipeline.checks import ConfigError, check_slurm_devices, instantiate_group
from tests.pipeline.conftest import CONF, compose_config, run_cli

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_its_groups_instantiate(experiment, tmp_path):
    cfg = compose_config(f"experiment={experiment}", run_dir=tmp_path)
    model = instantiate_group(cfg, "model")
    assert model.shard_plate and model.max_plate_nesting >= 1
    instantiate_group(cfg, "guide")(model)
    instantiate(cfg.optim.optimizer)(
        model.parameters() if list(model.parameters()) else [torch.zeros(1, requires_grad=True)]
    )
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"


@pytest.mark.parametrize("trainer", ["cpu", "ddp_cpu", "gpu", "ddp_gpu"])
@pytest.mark.parametrize("logger", ["wandb", "csv", "none"])
def test_trainer_and_logger_groups_compose(trainer, logger, tmp_path):
    cfg = compose_config(
        f"trainer={trainer}", f"logger={logger}", "optim=adam_cosine", run_dir=tmp_path
    )
    assert cfg.trainer.use_distributed_sampler is False
    assert cfg.optim.scheduler.T_max == cfg.trainer.max_steps


def test_slurm_launcher_uses_one_task_per_device(tmp_path):
    cfg = compose_config(
        "launcher=slurm",
        "trainer=ddp_gpu",
        "trainer.devices=4",
        run_dir=tmp_path,
        return_hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4
    assert cfg.ckpt_path == "last" and launcher.max_num_timeout > 0
    cpu = compose_config(
        "launcher=slurm_cpu", "trainer=ddp_cpu", run_dir=tmp_path, return_hydra_config=True
    )
    assert cpu.hydra.launcher.tasks_per_node == 2 and cpu.hydra.launcher.gpus_per_node is None


def test_unknown_experiment_names_the_option():
    result = run_cli("experiment=no_such_experiment", check=False, timeout=60)
    assert result.returncode != 0
    assert "experiment/no_such_experiment" in result.stderr
    assert "chorale_hmm" in result.stderr  # hydra lists the available options


def test_unknown_model_group_option_names_the_option():
    result = run_cli("experiment=toy_hmm", "model=no_such_model", check=False, timeout=60)
    assert result.returncode != 0 and "model/no_such_model" in result.stderr


def test_unknown_model_target_names_the_key(tmp_path):
    cfg = compose_config(
        "experiment=toy_hmm", "model._target_=enumdist.models.NoSuchModel", run_dir=tmp_path
    )
    with pytest.raises(
        ConfigError, match=r"model: cannot instantiate model._target_='enumdist.models.NoSuchModel'"
    ):
        instantiate_group(cfg, "model")


@pytest.mark.parametrize(
    "environ, ok",
    [
        ({}, True),
        ({"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "train"}, True),
        ({"SLURM_NTASKS": "4", "SLURM_NNODES": "1", "SLURM_JOB_NAME": "train"}, False),
        (
            {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "bash"},
            True,
        ),  # interactive allocation: not our tasks
    ],
)
def test_devices_must_match_slurm_tasks_per_node(environ, ok, tmp_path):
    cfg = compose_config("experiment=toy_hmm", "trainer=ddp_cpu", run_dir=tmp_path)
    if ok:
        check_slurm_devices(cfg, environ)
    else:
        with pytest.raises(ConfigError, match=r"trainer.devices=2 but this SLURM job runs 4 task"):
            check_slurm_devices(cfg, environ)


def test_cli_refuses_devices_different_from_slurm_tasks(tmp_path):
    env = {
        "SLURM_NTASKS": "3",
        "SLURM_NTASKS_PER_NODE": "3",
        "SLURM_JOB_NAME": "train",
        "SLURM_NNODES": "1",
    }
    result = run_cli(
        "experiment=toy_hmm", f"hydra.run.dir={tmp_path}", env=env, check=False, timeout=60
    )
    assert (
        result.returncode != 0
        and "trainer.devices=1 but this SLURM job runs 3 task(s)" in result.stderr
    )


def test_shard_plate_not_in_model_is_named(tmp_path):
    from tests.pipeline.test_train import train_with

    with pytest.raises(ValueError, match=r"model.shard_plate='nowhere'.*plates are \['data'\]"):
        train_with(tmp_path, "experiment=regime_mixture", "elbo=pyro", "+model.shard_plate=nowhere")


def test_missing_data_is_named(tmp_path):
    from tests.pipeline.test_train import train_with

    with pytest.raises(FileNotFoundError, match="data.load.*split 'train'.*data not found"):
        train_with(
            tmp_path,
            "data=saved",
            f"data.load.path={tmp_path / 'missing'}",
            "model=toy_hmm",
            "elbo=pyro",
        )


def test_checkpoint_of_another_model_is_refused(tmp_path):
    from tests.pipeline.test_train import train_with

    train_with(tmp_path / "a", "experiment=toy_hmm", "elbo=pyro", "trainer.max_steps=2")
    ckpt = Path(tmp_path / "a" / "checkpoints" / "last.ckpt")
    with pytest.raises(
        ValueError, match="ckpt_path: the checkpoint holds model._target_='enumdist.models.HMM'"
    ):
        train_with(tmp_path / "b", "experiment=regime_mixture", "elbo=pyro", f"ckpt_path={ckpt}")
    with pytest.raises(
        ValueError, match="ckpt_path: the checkpoint is from a different model.*different shapes"
    ):
        train_with(
            tmp_path / "c",
            "experiment=toy_hmm",
            "elbo=pyro",
            "model.hidden_dim=3",
            f"ckpt_path={ckpt}",
        )


def test_missing_checkpoint_path_is_named(tmp_path):
    from tests.pipeline.test_train import train_with

    with pytest.raises(ConfigError, match="ckpt_path='/nonexistent.ckpt' does not exist"):
        train_with(tmp_path, "experiment=toy_hmm", "elbo=pyro", "ckpt_path=/nonexistent.ckpt")


def test_debug_config_shrinks_the_run(tmp_path):
    cfg = compose_config("debug=default", run_dir=tmp_path)
    assert cfg.trainer.max_steps == 5 and cfg.data.max_items == 16 and not cfg.logger


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.optimizer.lr=-0.1", "optim.optimizer.lr=-0.1: expected a positive learning rate"),
        (
            "trainer.max_steps=0",
            "trainer.max_steps=0: expected a positive number of optimiser steps",
        ),
        ("trainer.max_steps=abc", "trainer.max_steps='abc' is a str, expected int"),
        ("trainer.max_steps=2.5", "trainer.max_steps=2.5 is a float, expected int"),
        ("data.batch_size=0", "data.batch_size=0: expected a positive number"),
        ("callbacks.model_checkpoint.save_top_k=-2", "callbacks.model_checkpoint.save_top_k=-2"),
    ],
)
def test_nonsense_values_are_refused_up_front_naming_the_key(tmp_path, override, message):
    from tests.pipeline.test_train import train_with

    with pytest.raises(ConfigError, match=re.escape(message)):
        train_with(tmp_path, "experiment=toy_hmm", "elbo=pyro", override)
    assert not (tmp_path / ".hydra").exists(), "refused before anything ran"


def test_saved_data_without_its_path_names_the_key(tmp_path):
    from tests.pipeline.test_train import train_with

    with pytest.raises(
        ConfigError, match=r"data.load.path is missing \(\?\?\?\).*data=saved reads <path>/train.pt"
    ):
        train_with(tmp_path, "data=saved", "model=toy_hmm", "elbo=pyro")


def test_cli_names_the_key_and_type_of_a_bad_value(tmp_path):
    result = run_cli(
        "experiment=toy_hmm", "trainer.max_steps=abc", f"hydra.run.dir={tmp_path}", check=False
    )
    assert (
        result.returncode != 0 and "trainer.max_steps='abc' is a str, expected int" in result.stderr
    )
