#!/usr/bin/env bash
# The tests: unit tests plus every notebook in smoke mode under nbmake. Does its own set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export REFUSAL_PRESET=smoke HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error WANDB_MODE=disabled
rm -rf runs/smoke  # smoke outputs are disposable; notebook 02 reads the caches notebook 01 writes in this run
python -m pytest -q tests --nbmake notebooks --nbmake-timeout=900 -p no:cacheprovider "$@"
