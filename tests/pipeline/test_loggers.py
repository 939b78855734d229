"""The loggers a run gets (enumdist/pipeline/loggers.py), checked in their own files: wandb's
offline transaction logs (read with wandb's protobufs), CSV, TensorBoard event files."""

from __future__ import annotations

import importlib.util
import struct

import pytest
import yaml

from enumdist.pipeline.checks import ConfigError
from enumdist.pipeline.loggers import (
    WandbLogger,
    build_loggers,
    finish_loggers,
    wandb_mode,
    wandb_options,
)
from tests.pipeline import wandb_records
from tests.pipeline.conftest import compose_config, run_cli

KNOWN_NOISE = (
    "`srun` command is available",
    "💡 Tip",
    "anonymous setting has no effect",
    "LeafSpec",
    "wandb run already in progress",
)


def train_in_process(run_dir, *overrides):
    from enumdist.train import train

    return train(
        compose_config(
            "experiment=toy_hmm",
            "callbacks.progress_bar.refresh_rate=0",
            *overrides,
            run_dir=run_dir,
        )
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """``-m optim.optimizer.lr=0.01,0.05`` with logger=wandb, both jobs in one process."""
    sweep_dir = tmp_path_factory.mktemp("wandb") / "sweep"
    result = run_cli(
        "-m",
        "experiment=toy_hmm",
        "logger=wandb",
        f"hydra.sweep.dir={sweep_dir}",
        "trainer.max_steps=6",
        "optim.optimizer.lr=0.01,0.05",
        timeout=400,
    )
    return sweep_dir, result.stdout + result.stderr


def test_sweep_gives_one_wandb_run_per_job_with_the_config_name_and_group(sweep):
    sweep_dir, _output = sweep
    files = [wandb_records.run_files(sweep_dir / job) for job in ("0", "1")]
    assert [len(f) for f in files] == [1, 1], files
    infos = [wandb_records.run_info(f[0]) for f in files]
    assert infos[0]["id"] != infos[1]["id"]
    assert all(i["name"] == "toy_hmm" and i["tags"] == ["enumdist"] for i in infos), infos
    assert infos[0]["group"] == infos[1]["group"] == f"toy_hmm/{sweep_dir.name}", infos
    configs = [wandb_records.config(f[0]) for f in files]
    assert [c["optim.optimizer.lr"] for c in configs] == [0.01, 0.05]
    assert configs[0]["trainer.max_steps"] == 6 and configs[0]["model._target_"].endswith("HMM"), (
        configs[0]
    )
    assert "hydra.run.dir" not in configs[0] and len(configs[0]) > 30
    for f, job in zip(files, ("0", "1")):
        steps = [
            row["trainer/global_step"]
            for row in wandb_records.history(f[0])
            if "train/loss_per_obs" in row
        ]
        assert steps == [0, 1, 2, 3, 4, 5], steps  # each run holds its own job's points only
        assert (sweep_dir / job / "wandb" / "run-id").read_text() == wandb_records.run_info(f[0])[
            "id"
        ]


def test_the_wandb_summary_keeps_the_best_validation_value(sweep):
    sweep_dir, _ = sweep
    path = wandb_records.run_files(sweep_dir / "0")[0]
    values = [
        row["valid/loss_per_obs"]
        for row in wandb_records.history(path)
        if "valid/loss_per_obs" in row
    ]
    summary = wandb_records.summary(path)
    assert len(values) == 2 and summary["valid/loss_per_obs"] == {
        "min": min(values),
        "last": values[-1],
    }


def test_a_sweep_prints_no_known_third_party_noise(sweep):
    _, output = sweep
    assert not [n for n in KNOWN_NOISE if n in output], [n for n in KNOWN_NOISE if n in output]
    assert "Total params" in output  # the model summary, with the parameter count


def test_a_resumed_run_continues_the_same_wandb_run_on_one_step_axis(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    train_in_process(run_dir, "logger=wandb", "trainer.max_steps=4", "test=false")
    train_in_process(run_dir, "logger=wandb", "trainer.max_steps=8", "ckpt_path=last", "test=false")
    segments = wandb_records.run_files(run_dir)
    assert len(segments) == 2, segments
    ids = {wandb_records.run_info(p)["id"] for p in segments}
    assert ids == {(run_dir / "wandb" / "run-id").read_text()}, ids
    steps = [
        [
            row["trainer/global_step"]
            for row in wandb_records.history(p)
            if "train/loss_per_obs" in row
        ]
        for p in segments
    ]
    assert steps == [[0, 1, 2, 3], [4, 5, 6, 7]], steps  # Lightning logs a step before counting it


def test_wandb_mode_offline_by_default_and_the_environment_or_config_wins():
    assert wandb_mode(None, {}) == "offline"
    assert wandb_mode(None, {"WANDB_MODE": "offline"}) == "offline"
    assert wandb_mode(None, {"WANDB_MODE": "online"}) == "online"
    assert wandb_mode(False, {"WANDB_MODE": "offline"}) == "online"  # logger.wandb.offline=false
    assert wandb_mode(True, {"WANDB_MODE": "online"}) == "offline"
    assert wandb_mode(False, {"WANDB_MODE": "disabled"}) == "disabled"
    with pytest.raises(ConfigError, match="WANDB_MODE='onlin'"):
        wandb_mode(None, {"WANDB_MODE": "onlin"})


def test_wandb_options_online_keep_log_model_and_offline_drop_it(tmp_path):
    node = compose_config(
        "logger=wandb", "logger.wandb.log_model=all", run_dir=tmp_path
    ).logger.wandb
    node = {k: v for k, v in node.items() if k != "_target_"}
    sweep_job = {
        "experiment": "chorale_hmm",
        "multirun": True,
        "sweep_dir": "multirun/x/2026-12-01_10-00-00",
    }
    online = wandb_options(node, tmp_path, sweep_job, environ={"WANDB_MODE": "online"})
    assert (
        online["mode"] == "online" and online["log_model"] == "all" and online["offline"] is False
    )
    assert online["name"] == "chorale_hmm" and online["group"] == "chorale_hmm/2026-12-01_10-00-00"
    assert (
        online["resume"] == "allow" and online["id"] == (tmp_path / "wandb" / "run-id").read_text()
    )
    offline = wandb_options(node, tmp_path, {"experiment": None}, environ={})
    assert (
        offline["mode"] == "offline" and offline["log_model"] is False and offline["group"] is None
    )
    assert offline["id"] == online["id"]  # one run directory, one wandb run


def test_log_model_with_the_offline_default_is_not_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_config(
        "experiment=toy_hmm", "logger=wandb", "logger.wandb.log_model=true", run_dir=tmp_path
    )
    loggers = build_loggers(cfg, tmp_path)
    try:
        assert [type(lg) for lg in loggers] == [WandbLogger] and loggers[0]._log_model is False
    finally:
        finish_loggers(loggers)
    path = wandb_records.run_files(tmp_path)[0]
    kinds = [r.WhichOneof("record_type") for r in wandb_records.records(path)]
    assert wandb_records.config(path).get("logger.wandb.log_model") is True, kinds


def test_decoded_outputs_become_a_wandb_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    table = tmp_path / "decoded_test.parquet"
    table.write_bytes(b"PAR1 stand-in")
    logger = WandbLogger(
        save_dir=str(tmp_path), project="enumdist", mode="offline", id="decodedrun1"
    )
    logger.experiment  # noqa: B018 (starts the run)
    logger.log_outputs([table])
    finish_loggers([logger])
    artifacts = wandb_records.artifacts(wandb_records.run_files(tmp_path)[0])
    assert artifacts == [
        {"name": "decoded-decodedrun1", "type": "decoded", "files": ["decoded_test.parquet"]}
    ]


def test_csv_logger_writes_the_config_as_hparams(tmp_path):
    train_in_process(tmp_path, "logger=csv", "trainer.max_steps=2", "test=false")
    hparams = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert hparams["optim.optimizer.lr"] == compose_config("experiment=toy_hmm").optim.optimizer.lr
    assert hparams["trainer.max_steps"] == 2


def tensorboard_events(path) -> list:
    """The Event protos of a TensorBoard file (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    data, events, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[offset + 12 : offset + 12 + length])
        events.append(event)
        offset += 12 + length + 4
    return events


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboardX") is None
    and importlib.util.find_spec("tensorboard") is None,
    reason="the [tensorboard] extra is not installed",
)
def test_tensorboard_logger_writes_scalars_and_hparams(tmp_path):
    train_in_process(tmp_path, "logger=tensorboard", "trainer.max_steps=3", "test=false")
    files = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert files, list(tmp_path.rglob("*"))
    tags = {
        value.tag for f in files for event in tensorboard_events(f) for value in event.summary.value
    }
    assert {"train/loss_per_obs", "valid/loss_per_obs"} <= tags, tags
    hparams = yaml.safe_load((tmp_path / "tensorboard" / "hparams.yaml").read_text())
    assert hparams["trainer.max_steps"] == 3


def test_mlflow_logger_writes_its_file_store_or_names_the_missing_package(tmp_path):
    if importlib.util.find_spec("mlflow") is None:
        with pytest.raises(ConfigError, match=r"logger.mlflow: .*pip install mlflow-skinny"):
            train_in_process(tmp_path, "logger=mlflow", "trainer.max_steps=2", "test=false")
    else:
        train_in_process(tmp_path, "logger=mlflow", "trainer.max_steps=2", "test=false")
        assert list((tmp_path / "mlruns").rglob("metrics/train/loss_per_obs")), list(
            tmp_path.rglob("*")
        )
