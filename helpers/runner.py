"""The main job: execute the numbered notebooks in order with papermill.

`python -m helpers.runner --preset offline` writes executed copies to
`runs/<preset>/notebooks/` and stops at the first failing notebook (its partly executed
copy is kept there, so you can see where it failed).  `--only 03` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import time
from pathlib import Path

from helpers.config import PRESETS, get_config

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NUMBERED = re.compile(r"^\d\d_.*\.ipynb$")


def numbered_notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The notebooks `NN_name.ipynb` in `folder`, in order."""
    return sorted(p for p in folder.iterdir() if NUMBERED.match(p.name))


def run_notebooks(preset: str, only: list[str] | None = None, folder: Path = NOTEBOOK_DIR) -> dict[str, dict]:
    """Run the notebooks (optionally only those whose number is in `only`); returns seconds and the peak
    memory of the kernels so far (GB) per notebook, also written to `runs/<preset>/runner_timings.json`."""
    import papermill

    cfg = get_config(preset)
    out_dir = cfg.run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    notebooks = [p for p in numbered_notebooks(folder) if not only or p.name[:2] in only]
    if not notebooks:
        raise SystemExit(f"No notebooks matched {only} in {folder}.")
    timings: dict[str, dict] = {}
    for i, nb in enumerate(notebooks, 1):
        print(f"[{i}/{len(notebooks)}] {nb.name} (preset {preset})", flush=True)
        start = time.perf_counter()
        papermill.execute_notebook(str(nb), str(out_dir / nb.name), parameters={"PRESET": preset},
                                   cwd=str(folder), progress_bar=True, kernel_name="python3")
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # the finished kernels
        timings[nb.name] = {"seconds": time.perf_counter() - start, "peak_kernel_memory_gb_so_far": peak_gb}
        print(f"    done in {timings[nb.name]['seconds']:.0f} s (peak kernel memory so far {peak_gb:.1f} GB) "
              f"-> {out_dir / nb.name}", flush=True)
    (cfg.run_dir / "runner_timings.json").write_text(json.dumps(timings, indent=1))
    return timings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline", help=f"one of {sorted(PRESETS)}")
    ap.add_argument("--only", nargs="+", metavar="NN", help="notebook numbers to run, e.g. 00 03")
    args = ap.parse_args(argv)
    if args.preset not in PRESETS:
        ap.exit(2, f"runner: unknown preset {args.preset!r}; valid presets: {sorted(PRESETS)}\n")
    if args.only:
        known = {p.name[:2] for p in numbered_notebooks()}
        unknown = sorted(set(args.only) - known)
        if unknown:
            ap.exit(2, f"runner: no notebook numbered {unknown}; the notebooks are {sorted(known)}\n")
    timings = run_notebooks(args.preset, args.only)
    print("total", f"{sum(t['seconds'] for t in timings.values()):.0f} s", file=sys.stderr)
    from helpers.report import build_report

    print(f"report: {build_report(args.preset)}")


if __name__ == "__main__":
    main()
