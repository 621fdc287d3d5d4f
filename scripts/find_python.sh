# shellcheck shell=bash
# Sourced by scripts/setup.sh: find a Python >= 3.11 with venv, in the order $PYTHON, python3.13, python3.12,
# python3.11, python3. Portable (bash on Linux and macOS; no GNU-only options).

python_ok() {  # python_ok CMD: CMD runs, is Python >= 3.11 and has venv and ensurepip
  "$1" -c 'import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

find_python() {  # prints the first suitable interpreter; returns 1 (printing what it tried to stderr) if none
  local tried="" candidate
  for candidate in ${PYTHON:+"$PYTHON"} python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then
      if python_ok "$candidate"; then
        echo "$candidate"
        return 0
      fi
      tried="$tried $candidate ($("$candidate" -c 'import sys; print(".".join(map(str, sys.version_info[:2])))' 2>/dev/null || echo "?")$("$candidate" -c 'import venv, ensurepip' >/dev/null 2>&1 || echo ", no venv"))"
    fi
  done
  echo "setup: needs Python >= 3.11 with venv; found:${tried:- none}. Get one: Ubuntu/Debian \`sudo apt install python3.11 python3.11-venv\` (or the deadsnakes PPA), macOS \`brew install python@3.12\`, anywhere \`uv python install 3.12\` or \`conda create -n py312 python=3.12\`; then rerun, or set PYTHON=/path/to/python3.11." >&2
  return 1
}

hash16() {  # the first 16 hex digits of the SHA-256 of stdin (sha256sum on Linux, shasum on macOS)
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi | cut -c1-16
}
