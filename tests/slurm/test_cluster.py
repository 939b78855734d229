"""The local SLURM cluster (slurm/cluster-up.sh) runs a real multi-task job.

Skipped only where `sbatch` is missing; CI runs cluster-up.sh first, so there it always runs.
"""

import shutil
import subprocess
import textwrap

import pytest

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        shutil.which("sbatch") is None, reason="sbatch not on PATH (run slurm/cluster-up.sh)"
    ),
]


def test_two_task_srun_job_runs_both_ranks(tmp_path):
    out = tmp_path / "ranks.out"
    script = tmp_path / "job.sh"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            #SBATCH --job-name=enumdist-test-cluster
            #SBATCH --nodes=1
            #SBATCH --ntasks=2
            #SBATCH --time=00:02:00
            #SBATCH --output={tmp_path}/slurm-%j.out
            srun bash -c 'echo "rank=$SLURM_PROCID ntasks=$SLURM_NTASKS" >> {out}'
            """
        )
    )
    proc = subprocess.run(
        ["sbatch", "--wait", "--parsable", str(script)], capture_output=True, text=True, timeout=120
    )
    logs = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert proc.returncode == 0, f"sbatch failed: {proc.stderr}\n{logs}"
    lines = sorted(out.read_text().splitlines())
    assert lines == ["rank=0 ntasks=2", "rank=1 ntasks=2"], f"{lines}\n{logs}"
