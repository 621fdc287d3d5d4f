"""What every notebook's setup cell calls: config, seeds, output folder, results file, and the cold start."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from helpers.config import Config, get_config
from helpers.files import atomic_write_json

# A notebook opened cold uses the teach run's outputs when runs/teach/ has every notebook it reads; otherwise it builds
# them with COLD_START_PRESET ($REFUSAL_COLD_START_PRESET overrides it; the browser test builds at smoke size).
TEACH_PRESET = "teach"
COLD_START_PRESET = "quick"
NO_COLD_START_ENV = "REFUSAL_NO_COLD_START"


def setup(preset: str, notebook: str, **overrides) -> tuple[Config, Path]:
    """Resolve the preset, build any missing upstream outputs (`cold_start`), seed everything, and create
    `runs/<preset>/<notebook>/`."""
    cfg = cold_start(get_config(preset, **overrides).check_device(), notebook, overrides)
    if cfg.preset != "paper":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out = cfg.run_dir / notebook
    out.mkdir(parents=True, exist_ok=True)
    print(f"preset={cfg.preset} model={cfg.model} device={cfg.device} -> {out}")
    return cfg, out


def upstream(stem: str) -> list[str]:
    """Every numbered notebook whose outputs `stem` reads, directly or through another, in running order."""
    from helpers.runner import DEPENDS_ON

    seen: set[str] = set()
    todo = list(DEPENDS_ON.get(stem, ()))
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo.extend(DEPENDS_ON.get(s, ()))
    return sorted(seen)


def missing_upstream(cfg: Config, notebook: str) -> list[str]:
    """The upstream notebooks of `notebook` (its output folder name, e.g. "steering") without a results.json
    under `cfg.run_dir`."""
    from helpers.runner import DEPENDS_ON

    stem = next((s for s in DEPENDS_ON if s[3:] == notebook), None)
    if stem is None:
        return []
    return [s for s in upstream(stem) if not (cfg.run_dir / s[3:] / "results.json").exists()]


def cold_start(cfg: Config, notebook: str, overrides: dict | None = None) -> Config:
    """`cfg` if every notebook `notebook` reads from has run for its preset. Otherwise, with one line saying so: the
    teach preset's config when `runs/teach/` has all of them (a class whose teacher ran the teach job), else the
    config of the small `quick` preset after building the missing ones with it (~4 minutes on 2 CPU cores; the
    runner skips what `runs/quick/` already has), so a notebook opened first on a fresh machine starts its own work
    within minutes instead of failing. Set REFUSAL_NO_COLD_START=1 to get a one-line error instead."""
    missing = missing_upstream(cfg, notebook)
    if not missing:
        return cfg
    numbers = " ".join(s[:2] for s in missing)
    if os.environ.get(NO_COLD_START_ENV):
        raise FileNotFoundError(f"Notebook(s) {numbers} have not run for preset {cfg.preset!r} (nothing in "
                                f"{cfg.run_dir}): run `python -m helpers.runner --preset {cfg.preset} --only "
                                f"{numbers}` first, or unset {NO_COLD_START_ENV} to build them at a small size.")
    from helpers.runner import run_notebooks

    small = os.environ.get("REFUSAL_COLD_START_PRESET")
    if small is None:
        teach = get_config(TEACH_PRESET, **(overrides or {}))
        small = TEACH_PRESET if not missing_upstream(teach, notebook) else COLD_START_PRESET
    built = get_config(small, **(overrides or {})).check_device()
    todo = missing_upstream(built, notebook)
    switch = "" if built.preset == cfg.preset else (
        f" and continuing with the {small!r} preset ({built.model}); for the {cfg.preset!r} sizes run "
        f"`python -m helpers.runner --preset {cfg.preset} --only {numbers}` and rerun this notebook")
    print(f"Cold start: notebook(s) {numbers} have not run for preset {cfg.preset!r}; "
          + (f"building {' '.join(s[:2] for s in todo)} at {small} size in {built.run_dir} (a few minutes)"
             if todo else f"using the {small} preset's outputs in {built.run_dir}") + switch + ".", flush=True)
    if todo:
        run_notebooks(small, only=[s[:2] for s in todo], log_output=False)
    return built


def save_results(out_dir: Path, results: dict) -> Path:
    """Write the notebook's key numbers to `results.json` in its output folder."""
    return atomic_write_json(Path(out_dir) / "results.json", results)
