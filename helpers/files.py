"""Writing files so that a killed run never leaves one that looks finished: write a temporary name, then rename."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable


_REACHED: dict[str, int] = {}


def pause_point(event: str) -> None:
    """A place where the kill -9 test stops the job (`tests/test_kill_resume.py`). With REFUSAL_PAUSE_AT="event:n",
    the n-th time this process reaches `event` it writes "event pid" to $REFUSAL_PAUSE_MARKER and waits there to be
    killed. Without the variable (always, outside that test) it returns at once."""
    want = os.environ.get("REFUSAL_PAUSE_AT")
    if not want:
        return
    name, _, n = want.rpartition(":")
    if name != event:
        return
    _REACHED[event] = _REACHED.get(event, 0) + 1
    if _REACHED[event] == int(n):
        Path(os.environ["REFUSAL_PAUSE_MARKER"]).write_text(f"{event} {os.getpid()}")
        while True:
            time.sleep(1)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files and folders (`*.tmp-<pid>`) that a killed run left under `folder`, those of
    processes that are no longer alive; returns what was removed."""
    removed = []
    for tmp in Path(folder).rglob("*.tmp-*"):
        pid = tmp.name.rpartition(".tmp-")[2]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, then rename the temporary file to `path` (removed again if `write` fails)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        pause_point(f"write:{path.name}")
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
    except OSError:
        if not final.is_dir():  # not another process that built the same folder first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
