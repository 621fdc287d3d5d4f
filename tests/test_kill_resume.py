"""kill -9 anywhere: the whole smoke main job (the runner and its kernel) is killed with SIGKILL at several points,
rerun until it finishes, and must end with the files of an uninterrupted run and no half-written file.

The points (five: one for each way the job resumes) are reached deterministically through
`helpers.files.pause_point`: with REFUSAL_PAUSE_AT="event:n" the process that reaches `event` the n-th time writes a
marker and waits, and the test then kills every process of the job at once. The whole smoke job runs again, killed
and resumed (~5 min with the smoke preset's tiny model, one thread; scripts/test.sh runs it in a process beside the
other tests); `-m "not slow"` leaves it out.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import die_with_the_test, kill_tree

REPO = Path(__file__).resolve().parents[1]

# (REFUSAL_PAUSE_AT, where the job is when it is killed), in the order the job reaches them: one point for each way
# the job resumes. 01 and 02 resume inside the notebook (finished shards and SAEs are kept); 03-06 rerun from their
# start, so one kill in an early one (03, its generation) and one in the last (06) stand for the four (kills inside 04
# and 05 were dropped in session 17 to keep the test command under 20 minutes: they exercised the same path, ~20 s
# each); a kill while writing a file stands for every write (`files.atomic_write_*`, the same code for each file).
KILL_POINTS = [
    ("cache_shard:1", "01_cache_activations", "caching, after the first shard of a two-shard cache"),
    ("sae_batch:40", "02_train_saes", "training the first SAE"),
    ("generate_step:3", "03_refusal_direction", "generating the first completions"),
    ("refusal_gradient:2", "06_refusal_gradient", "taking the second prompt's refusal gradient"),
    ("write:report.html:1", None, "writing the report"),
]
# Values that are measurements of the machine, not results (they differ between any two runs).
def _is_timing(key: str) -> bool:
    """Timings, and identities drawn at random for each run (a cache's `cache_id`, which SAE training keys record)."""
    key = key.lower()
    return key.endswith("seconds") or "per_s" in key or key in {"elapsed", "finished", "run_id", "cache_id", "cache_ids"}


STARTED: list[subprocess.Popen] = []  # every job this test started: none may outlive it (`die_with_the_test`)


def _job(runs: Path, log: Path, pause: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "REFUSAL_RUNS_DIR": str(runs), "HF_HUB_OFFLINE": "1", "MKL_CBWR": "AUTO",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",  # as scripts/test.sh runs the reference (see there)
           "WANDB_MODE": "disabled", "TRANSFORMERS_VERBOSITY": "error", "REFUSAL_PAUSE_MARKER": str(runs / "paused")}
    env.pop("REFUSAL_PAUSE_AT", None)
    if pause:
        env["REFUSAL_PAUSE_AT"] = pause
    job = subprocess.Popen([sys.executable, "-m", "helpers.runner", "--preset", "smoke"], cwd=REPO, env=env,
                           stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)
    STARTED.append(job)
    return job


def _kill_at(runs: Path, log: Path, pause: str, timeout: float = 900) -> str:
    """Start the job, wait until it reaches `pause`, SIGKILL every process of it; returns what the marker says."""
    marker = runs / "paused"
    marker.unlink(missing_ok=True)
    job = _job(runs, log, pause)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if job.poll() is not None:
            pytest.fail(f"the job ended (exit {job.returncode}) before reaching {pause}; see {log}")
        if time.monotonic() > deadline:
            kill_tree(job.pid)
            pytest.fail(f"{pause} not reached in {timeout:.0f} s; see {log}")
        time.sleep(0.5)
    time.sleep(0.5)  # the marker is written just before the process sleeps: let it get there
    victims = kill_tree(job.pid)
    job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL
    for p in victims:  # the kernel too: nothing of the killed job may keep writing
        deadline = time.monotonic() + 30
        while Path(f"/proc/{p}").exists() and "Z" not in _state(p):
            assert time.monotonic() < deadline, f"process {p} of the killed job is still alive"
            time.sleep(0.2)
    return marker.read_text()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _strip_timings(value):
    if isinstance(value, dict):
        return {k: _strip_timings(v) for k, v in value.items() if not _is_timing(k)}
    if isinstance(value, list):
        return [_strip_timings(v) for v in value]
    return value


# Files of a run that are not results, each with why it is left out of the comparison.
NOT_COMPARED = {
    "runner_timings.json": "the machine's timings and memory",
    "notebooks/*.ipynb": "the executed notebooks hold progress bars with rates and timings; their results are the files",
    "notebooks/*.done.json": "the runner's record that a notebook finished (nbmake's reference run has none): checked "
                             "for every notebook at the end",
}
# Text files compared token by token: numbers to the tolerance of `_differences`, everything else exactly, after
# removing what differs between any two runs by design (each such pattern named).
VOLATILE = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<plotly div id>"),
    (re.compile(r"built \d{4}-\d\d-\d\d \d\d:\d\d"), "built <time>"),
    # the report's notebook header: the runner's link to the executed notebook and its time (nbmake's reference run
    # has neither), then every timing the report marks (helpers/report.py)
    (re.compile(r"( · <a href=\"notebooks/[^\"]*\">executed notebook</a>)?( · <span class='timing'>[^<]*</span>)?</p>"),
     "</p>"),
    (re.compile(r"(<td class='timing'>)[^<]*"), r"\1<timing>"),
]
NUMBER = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


def _text_tokens(text: str) -> list:
    for pattern, stand_in in VOLATILE:
        text = pattern.sub(stand_in, text)
    parts = NUMBER.split(text)
    numbers = [float(x) for x in NUMBER.findall(text)]
    return [x for pair in zip(parts, numbers + [None]) for x in pair if x is not None]


def _outputs(run_dir: Path) -> dict[str, object]:
    """Every file a run produced, comparable across runs: JSON parsed (less its timings), text (HTML, Markdown, CSV) as tokens, anything else (activation shards,
    SAE weights, directions) as bytes; NOT_COMPARED left out."""
    out: dict[str, object] = {}
    for f in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = str(f.relative_to(run_dir))
        if any(Path(rel).match(pattern) for pattern in NOT_COMPARED):
            continue
        if f.suffix == ".json":
            out[rel] = _strip_timings(json.loads(f.read_text()))
        elif f.suffix in {".html", ".md", ".csv", ".txt"}:
            out[rel] = _text_tokens(f.read_text())
        else:
            out[rel] = f.read_bytes()
    return out


def _differences(a, b, path="", roots: tuple[str, str] = ("", "")) -> list[str]:
    """Where two results differ. Paths are compared relative to each run's folder (`roots`); floats to 1e-9
    relative: least-squares fits (LAPACK through multithreaded MKL) differ between processes in the last bits
    (seen: 0.7285132049386888 against ...884, relative 5.5e-16: the bound is ~10⁶ times that), which is not what a
    broken resume looks like."""
    if isinstance(a, str) and isinstance(b, str) and roots[0]:
        a, b = a.replace(roots[0], "<run>"), b.replace(roots[1], "<run>")
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (a != a and b != b) else [f"{path}: {a} != {b}"]
    if isinstance(a, dict) and isinstance(b, dict):
        diffs = [f"{path}/{k}: only in {'first' if k in a else 'second'}" for k in set(a) ^ set(b)]
        for k in sorted(set(a) & set(b)):
            diffs += _differences(a[k], b[k], f"{path}/{k}", roots)
        return diffs
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]", roots)]
    return [] if a == b else [f"{path}: {str(a)[:80]} != {str(b)[:80]}"]


def _fresh_reference() -> Path | None:
    """The smoke run that `bash scripts/test.sh` has just made under nbmake (runs/smoke, every notebook's results,
    newer than every notebook and helpers module), to compare with instead of running the job a third time. Only
    when this process runs on one thread as test.sh sets it (so did the notebooks nbmake ran): a backward pass on
    two threads differs from one thread's in the last bits (~1e-7 relative), which this test would call a difference."""
    if os.environ.get("OMP_NUM_THREADS") != "1":
        return None
    run_dir = REPO / "runs" / "smoke"
    notebooks = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    sources = notebooks + sorted((REPO / "helpers").glob("*.py"))
    results = list(run_dir.glob("*/results.json"))
    if len(results) < len(notebooks):
        return None
    if min(f.stat().st_mtime for f in results) < max(f.stat().st_mtime for f in sources):
        return None
    return run_dir.parent


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                    reason="finds the job's processes through /proc (Linux only); on macOS the runner's resume tests "
                           "in test_runner.py still run")
def test_the_main_job_survives_kill_9_anywhere(tmp_path):
    with die_with_the_test(STARTED):
        _kill_and_resume(tmp_path)


def _kill_and_resume(tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    killed = tmp_path / "killed"
    reference = _fresh_reference()
    if reference is None:  # no fresh smoke run beside us: make one
        reference = tmp_path / "reference"
        job = _job(reference, log)
        assert job.wait(timeout=1800) == 0, f"the uninterrupted smoke job failed; see {log}"
    if not (reference / "smoke" / "report.html").exists():  # nbmake's reference run has no report: build it
        env = {**os.environ, "REFUSAL_RUNS_DIR": str(reference), "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-m", "helpers.report", "--preset", "smoke"], cwd=REPO, env=env, check=True,
                       capture_output=True)
    # read now: scripts/test.sh runs this test beside the others, which may later add files to runs/smoke
    ref = _outputs(reference / "smoke")

    for pause, notebook, where in KILL_POINTS:
        said = _kill_at(killed, log, pause)
        assert said.split()[0] == pause.rpartition(":")[0], said
        if notebook:
            done = killed / "smoke" / "notebooks" / f"{notebook}.done.json"
            assert not done.exists(), f"{notebook} looks finished after a kill while {where}"
    job = _job(killed, log)
    assert job.wait(timeout=1800) == 0, f"the resumed job failed; see {log}"

    run_dir = killed / "smoke"
    left = [str(p) for p in run_dir.rglob("*.tmp-*")]
    assert not left, f"half-written files left behind: {left}"
    text = log.read_text()
    assert "unchanged since its last finished run" in text, "a resumed run must skip the notebooks already done"
    assert "left by a run that was killed while writing it" in text, "the temporary of the killed write is removed"
    got = _outputs(run_dir)
    # every file the resumed job wrote is in the reference and vice versa, within the folders the job writes (other
    # tests may leave files at the top of the reference run, e.g. scripts' outputs)
    folders = {Path(k).parts[0] for k in got}
    ref = {k: v for k, v in ref.items() if Path(k).parts[0] in folders}
    assert set(ref) == set(got), f"files only in one run: {sorted(set(ref) ^ set(got))}"
    kinds = {Path(k).suffix for k in ref}
    assert {".json", ".safetensors", ".pt", ".html"} <= kinds, kinds
    binary = [k for k, v in ref.items() if isinstance(v, bytes)]
    different = [k for k in binary if ref[k] != got[k]]
    assert not different, f"not byte-identical after the resume: {different}"
    diffs = _differences(ref, got, roots=(str(reference / "smoke"), str(run_dir)))
    assert not diffs, "the resumed job differs from an uninterrupted one:\n" + "\n".join(diffs[:20])
    assert (run_dir / "report.html").stat().st_size > 1000
    for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert (run_dir / "notebooks" / f"{nb.stem}.done.json").exists(), nb.stem
