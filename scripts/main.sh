#!/usr/bin/env bash
# The main job on a fresh machine: set-up, then the default experiment (an HMM on the Bach
# chorales that ship inside music21, trained on the CPU, then decoded). Extra arguments are
# Hydra overrides, e.g. `bash scripts/main.sh trainer.max_steps=50`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
. .venv/bin/activate
export MPLBACKEND=Agg
python -m enumdist.train decode.enabled=true "$@"
