#!/usr/bin/env bash
# Everything the tests need, then the tests: venv + install, lint + format + type check,
# local SLURM cluster, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
. .venv/bin/activate
# Style and types first: a lint, format or type error fails CI before any test runs.
ruff check .
ruff format --check .
mypy enumdist/engine
if [ -f slurm/cluster-up.sh ]; then bash slurm/cluster-up.sh; fi
export WANDB_MODE=offline MPLBACKEND=Agg
python -m pytest -q --timeout=1500 "$@"
