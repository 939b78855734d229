"""Every packaged experiment (enumdist/conf/experiment/*.yaml) runs end to end on its real data:
fit, validate, test and decode, a few steps on a few items (debug=default)."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from tests.pipeline.conftest import CONF, compose_config

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
QUICK = [
    "debug=default",
    "data.max_items=6",
    "trainer.max_steps=2",
    "fold_in.steps=3",
    "callbacks.progress_bar.refresh_rate=0",
]
DECODE = [
    "decode.enabled=true",
    "++decode.marginals=true",
    "decode.progress=false",
    "decode.pictures=true",
]


def test_the_packaged_experiments_are_the_ones_the_readme_lists():
    assert len(EXPERIMENTS) >= 9 and "python_docs_topics" in EXPERIMENTS


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_fits_validates_tests_and_decodes(experiment, tmp_path):
    from hydra.utils import get_class

    from enumdist.train import train

    cfg = compose_config(f"experiment={experiment}", *QUICK, run_dir=tmp_path)
    decodable = get_class(cfg.model._target_).decodable  # long chains: no enumerated sites
    if decodable:
        cfg = compose_config(f"experiment={experiment}", *QUICK, *DECODE, run_dir=tmp_path)
    metrics = train(cfg)
    for key in ("train/loss_per_obs", "valid/loss_per_obs", "test/loss_per_obs"):
        assert math.isfinite(metrics[key]), (key, metrics)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    if not decodable:
        return
    split = cfg.decode.split
    decoded = pq.read_table(tmp_path / "decoded" / f"{split}-temperature0" / "decoded.parquet")
    assert 0 < decoded.num_rows <= cfg.data.max_items
    marginals = [c for c in decoded.column_names if c.endswith("_marginals")]
    assert marginals, decoded.column_names
