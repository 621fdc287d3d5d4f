"""Jobs a test starts in sessions of their own (the runner and its kernel), so that stopping pytest would not stop
them: finding every process of one, killing them all, and making them die with the test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (the kernel is a child of the runner, in a session of its own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def kill_tree(pid: int) -> list[int]:
    """SIGKILL `pid` and every process below it at once (those already gone are skipped); returns them."""
    victims = descendants(pid)
    for p in victims:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return victims


@contextlib.contextmanager
def die_with_the_test(jobs: list[subprocess.Popen]):
    """Inside the block SIGTERM (scripts/test.sh sends it to the lane beside when interrupted) ends the test as a
    KeyboardInterrupt; on leaving it, whatever is left of every job in `jobs` (appended to as they start) is killed."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield jobs
    finally:
        signal.signal(signal.SIGTERM, before)
        for job in jobs:
            if job.poll() is None:
                kill_tree(job.pid)
