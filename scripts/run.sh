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
export MKL_CBWR=AUTO  # alignment-independent MKL results: see scripts/test.sh
export TRANSFORMERS_VERBOSITY=error WANDB_MODE=disabled
python -m helpers.runner --preset "$preset"
