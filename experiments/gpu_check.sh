#!/usr/bin/env bash
# The GPU run of issue 6's benchmark, for a session that is lent a GPU machine (device tool).
# That machine has PyTorch with CUDA but no pyro-ppl and no internet, so prepare here first:
#
#   echo /.devcarry/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .devcarry/whl \
#       pyro-ppl==1.9.2 pyro-api==0.1.2
#   mkdir -p .devcarry/cache && cp ~/.cache/enumdist/chorales-v1.npz .devcarry/cache/
#
# then run, carrying .devcarry:  bash experiments/gpu_check.sh   (about 3 minutes)
# It writes BENCHMARKS_GPU.md (to $OUT/ when set) and runs the engine tests on the GPU box's CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcarry/whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" ENUMDIST_CACHE="$PWD/.devcarry/cache" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv
out="${OUT:-.}/BENCHMARKS_GPU.md"
python3 experiments/benchmark.py --device cuda --out "$out"
cat "$out"
