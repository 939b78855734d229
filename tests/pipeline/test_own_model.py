"""Bring your own model: docs/own_model.md's files (a model class and a plain function in the
user's own package, their experiment YAMLs, their data as .pt files) train, test and decode
through the command line and Hydra's search path; examples/own_model.py runs as shipped."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.pipeline.conftest import CONF, ROOT


def write_doc_files(folder: Path) -> list[str]:
    """Every fenced block of docs/own_model.md whose first line is ``# <file name>``."""
    doc = (ROOT / "docs" / "own_model.md").read_text()
    written = []
    for block in re.findall(r"```(?:python|yaml)\n# (\S+\.(?:py|yaml))\n(.*?)```", doc, re.S):
        name, text = block
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
        written.append(name)
    return written


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    assert set(write_doc_files(tmp_path)) == {
        "my_models.py",
        "make_data.py",
        "my_conf/experiment/my_clusters.yaml",
        "my_conf/experiment/my_function.yaml",
    }
    subprocess.run([sys.executable, "make_data.py"], cwd=tmp_path, check=True, timeout=120)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.slow
def test_own_class_and_experiment_through_the_command_line(user_folder):
    run_dir = user_folder / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "enumdist.train",
            "--config-dir",
            "my_conf",
            "experiment=my_clusters",
            "logger=none",
            "trainer.max_steps=30",
            f"paths.run_dir={run_dir}",
            "decode.enabled=true",
            "decode.progress=false",
        ],
        cwd=user_folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={**run_env(), "PYTHONPATH": f"{ROOT}:{user_folder}"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "test loss per observation" in result.stdout
    rows = pq.read_table(run_dir / "decoded" / "test-temperature0" / "decoded.parquet").to_pylist()
    x = torch.load(user_folder / "my_data" / "test.pt")["x"]
    assert len(rows) == len(x) == 50
    # the two clusters (around -3 and +3) get two different MAP states
    left = {r["z"][0] for r in rows if x[r["index"]] < -1}
    right = {r["z"][0] for r in rows if x[r["index"]] > 1}
    assert len(left) == len(right) == 1 and left != right


def test_own_function_through_hydra_searchpath_and_decode(user_folder):
    from enumdist.decode import decode
    from enumdist.train import train

    run_dir = user_folder / "fn_run"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"hydra.searchpath=[file://{user_folder / 'my_conf'}]",
                "experiment=my_function",
                "logger=none",
                "trainer.max_steps=30",
                "callbacks.progress_bar.refresh_rate=0",
                f"paths.run_dir={run_dir}",
            ],
        )
    metrics = train(cfg)
    assert metrics["test/loss_per_obs"] < 3.0  # nats per point; the initial locs (-1, 1) give > 3.5
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(state) == {"model.params.weights", "model.params.locs"}
    outputs = decode(
        {"run_dir": str(run_dir), "marginals": True, "progress": False, "pictures": False}
    )
    table = pq.read_table(outputs["decoded"])
    assert table.num_rows == 50 and {"z", "z_marginals"} <= set(table.column_names)


def test_the_example_script_trains_and_decodes_two_clusters(capsys):
    namespace = runpy.run_path(str(ROOT / "examples" / "own_model.py"), run_name="__main__")
    locs = sorted(namespace["model"].locs.tolist())
    assert locs[0] == pytest.approx(-3, abs=0.5) and locs[1] == pytest.approx(3, abs=0.5)
    z = namespace["decoded"]["z"][:, 0]
    assert len(set(z[:60].tolist())) == 1 and len(set(z[60:].tolist())) == 1 and z[0] != z[-1]
    assert "test loss per point" in capsys.readouterr().out


def run_env() -> dict:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}
