"""Writing files so that a killed run never leaves one that looks finished: write a temporary name, then rename."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, then rename the temporary file to `path` (removed again if `write` fails)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data) -> Path:
    """Write JSON atomically (numbers that are not JSON types, e.g. numpy floats, become floats)."""
    return atomic_write_text(path, json.dumps(data, indent=1, default=float))


def atomic_write_dir(final: str | Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp_dir)` and rename the folder into place (nothing is done if `final` exists), so a killed
    run leaves no half-written folder."""
    final = Path(final)
    if final.exists():
        return final
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
