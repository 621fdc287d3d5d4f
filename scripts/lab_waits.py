"""A class's compute waits, measured in JupyterLab: each exercise copy opened as a learner opens it (nothing set, so
at the class size), its solutions put in the stubs, run all once in headless Chromium with JupyterLab recording each
cell's timing; then the wait before each exercise, in its checks, after the last, and in all (the same measure as
`python -m helpers.exercises --waits`, which reads the runner's kernel instead), and the lab's own start-up.

Each copy runs in a folder of its own with a copy of `runs/<preset>` (the finished teach run a class prepares, see
docs/teaching.md), so the measurement writes nothing into the real run. Needs the headless Chromium of the browser
tests (`bash scripts/setup.sh` with Node.js). Writes `runs/<preset>/exercise_waits_lab.json` and prints a table.

Run: `python scripts/lab_waits.py [--preset teach] [--notebooks 03 04 05 06]`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "browser"))
import lab  # noqa: E402  (the JupyterLab server and node runner of the browser tests)

from helpers.config import get_config  # noqa: E402
from helpers.exercises import EXERCISES, exercise_waits, waits_markdown  # noqa: E402
from helpers.files import atomic_write_json  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="teach", help="the run the copies read (a class's finished teach run)")
    ap.add_argument("--notebooks", nargs="+", default=None, help="exercise copies by number, e.g. 03 04 (default: all)")
    ap.add_argument("--deadline", type=int, default=1800, help="seconds allowed for each copy")
    args = ap.parse_args(argv)
    copies = sorted(EXERCISES.glob("[0-9][0-9]_*.ipynb"))
    if args.notebooks:
        copies = [c for c in copies if c.name[:2] in args.notebooks]
        if not copies:
            sys.exit(f"lab_waits: no exercise copy numbered {args.notebooks} in {EXERCISES}")
    run_dir = get_config(args.preset).run_dir
    if not (run_dir / "refusal_direction" / "results.json").exists():
        sys.exit(f"lab_waits: {run_dir} has no finished run: run `python -m helpers.runner --preset {args.preset}` "
                 "first (the class prepares the same way).")
    why = lab.unavailable()
    if why:
        sys.exit(f"lab_waits: {why}")
    os.environ.pop("REFUSAL_PRESET", None)  # nothing set: the copy picks its own (class) size
    out_file = run_dir / "exercise_waits_lab.json"
    found = json.loads(out_file.read_text()) if out_file.exists() else {}
    for copy in copies:
        with tempfile.TemporaryDirectory(prefix="lab_waits_") as tmp:
            root = Path(tmp)
            shutil.copy(copy, root / copy.name)
            shutil.copytree(run_dir, root / "runs" / run_dir.name, ignore=shutil.ignore_patterns("notebooks"))
            env = {"REFUSAL_RUNS_DIR": str(root / "runs"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
                   "TRANSFORMERS_VERBOSITY": "error"}
            settings = {"@jupyterlab/notebook-extension:tracker": {"recordTiming": True}}
            print(f"{copy.name}: opening it in JupyterLab and running it with the solutions filled in ...", flush=True)
            t0 = time.perf_counter()
            with lab.jupyter_lab(root, env, settings) as (base, token):
                out = lab.run_node("time_exercise.mjs", f"{base}/lab/tree/{copy.name}?token={token}",
                                   str(args.deadline), timeout=args.deadline + 60)
            wall = time.perf_counter() - t0
            lines = out.stdout.strip().splitlines()
            result = json.loads(lines[-1]) if lines else {"failure": f"no output (exit {out.returncode})"}
            if "failure" in result:
                sys.exit(f"lab_waits: {copy.name} did not run through in JupyterLab: {result['failure']} "
                         f"(steps: {result.get('steps')}; log: {out.stderr[-800:]})")
            waits = exercise_waits(nbformat.read(root / copy.name, as_version=4))
            waits.update({"lab_steps": result["steps"], "wall_s": round(wall, 1), "filled": result["filled"],
                          "preset_read": args.preset})
            found[copy.name] = waits
            atomic_write_json(out_file, found)  # after each copy: an interrupted measurement keeps what it measured
            print(f"  {waits['total_s']:.0f} s of compute, {wall:.0f} s in all; before exercise 1: "
                  f"{waits['exercises'][0]['wait_before_s']:.0f} s", flush=True)
    print(waits_markdown(found))
    print(f"written to {out_file}")


if __name__ == "__main__":
    main()
