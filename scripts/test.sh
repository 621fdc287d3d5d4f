#!/usr/bin/env bash
# The tests: unit tests plus every notebook in smoke mode under nbmake. Does its own set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# MKL results independent of memory alignment: one full test run saw TL-vs-HF differences 10x the usual
# (1.6e-3 instead of 1.5e-4) that no isolated rerun reproduced. Suspected (not confirmed) cause: MKL sgemm
# results varying with memory alignment, which MKL_CBWR removes at no measured cost (100-113 GFLOP/s).
export MKL_CBWR=AUTO
export REFUSAL_PRESET=smoke HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error WANDB_MODE=disabled
rm -rf runs/smoke  # smoke outputs are disposable; notebook 02 reads the caches notebook 01 writes in this run
# Notebooks first (in smoke mode under nbmake), so that the browser test opens the smoke run's report.
python -m pytest -q --nbmake notebooks tests --nbmake-timeout=900 -p no:cacheprovider --durations=25 "$@"
