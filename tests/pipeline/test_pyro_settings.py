"""Pyro's process-wide settings change when training starts, not when the pipeline is imported."""

import os
import subprocess
import sys

from tests.pipeline.conftest import ROOT

IMPORT_AND_COMPARE = """
import pyro
before = pyro.settings.get()
import enumdist.pipeline.module, enumdist.decoding, enumdist.decode, enumdist.train
from enumdist.pipeline.pyro_settings import apply_pyro_settings
assert pyro.settings.get() == before, (before, pyro.settings.get())
apply_pyro_settings(validate=True)
assert pyro.settings.get("module_local_params") is True
print("unchanged by import")
"""


def test_importing_the_pipeline_or_decoding_changes_no_pyro_setting():
    # a fresh interpreter: in this one, an earlier test may have trained already
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_AND_COMPARE],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "unchanged by import"
