"""``enumdist-decode`` is a Hydra app: --help, typed errors, exit status 0, -m over run dirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "decoding"))

from decoding_run_dirs import make_run_dir  # noqa: E402

import enumdist.models  # noqa: E402,F401  (make_run_dir looks models up on the package)


def decode_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "enumdist.decode", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_help_lists_every_option(tmp_path):
    result = decode_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("run_dir: ???", "temperature: 0", "marginals: false", "decode_batch_size: 32"):
        assert option in result.stdout
    assert list(tmp_path.iterdir()) == []  # Hydra leaves no outputs/ folder behind


@pytest.mark.parametrize(
    "override, message",
    [
        ("temperature=abc", "full_key: temperature"),
        ("no_such_option=1", "Key 'no_such_option' not in 'DecodeConfig'"),
    ],
)
def test_a_bad_option_is_refused_by_name(tmp_path, override, message):
    result = decode_cli("run_dir=x", override, cwd=tmp_path)
    assert result.returncode == 1 and message in result.stderr


def test_missing_run_dir_says_so(tmp_path):
    result = decode_cli(cwd=tmp_path)
    assert (
        result.returncode == 1 and "run_dir=<training run directory> is required" in result.stderr
    )


@pytest.mark.slow
def test_decoding_exits_zero_and_multirun_decodes_each_run(tmp_path):
    runs = [make_run_dir(tmp_path / name)[0] for name in ("a", "b")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    single = decode_cli(f"run_dir={runs[0]}", "progress=false", "pictures=false", cwd=elsewhere)
    assert single.returncode == 0, single.stderr
    assert single.stderr.strip() == "" or "{" not in single.stderr  # no dict printed on exit
    assert f"decoded: {runs[0]}/decoded/test-temperature0/decoded.parquet" in single.stdout
    assert list(elsewhere.iterdir()) == []
    swept = decode_cli(
        "-m",
        f"run_dir={runs[0]},{runs[1]}",
        "split=valid",
        "marginals=true",
        "progress=false",
        "pictures=false",
        cwd=elsewhere,
    )
    assert swept.returncode == 0, swept.stderr
    for run in runs:
        table = pq.read_table(run / "decoded" / "valid-temperature0" / "decoded.parquet")
        assert table.num_rows > 0 and "x_marginals" in table.column_names
    assert [p.name for p in elsewhere.iterdir()] == ["multirun"]  # only Hydra's sweep record
