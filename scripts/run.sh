#!/usr/bin/env bash
# The main job: run the numbered notebooks in order; executed copies and results go to runs/<preset>/.
# Usage: bash scripts/run.sh [preset]   (default: offline)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
preset=${1:-offline}
[ "$preset" = paper ] || export HF_HUB_OFFLINE=1
# MKL results independent of memory alignment: one full test run saw TL-vs-HF differences 10x the usual
# (1.6e-3 instead of 1.5e-4) that no isolated rerun reproduced. Suspected (not confirmed) cause: MKL sgemm
# results varying with memory alignment, which MKL_CBWR removes at no measured cost (100-113 GFLOP/s).
export MKL_CBWR=AUTO
export TRANSFORMERS_VERBOSITY=error WANDB_MODE=disabled
python -m helpers.runner --preset "$preset"
