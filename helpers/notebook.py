"""What every notebook's setup cell calls: config, seeds, output folder, results file."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from helpers.config import Config, get_config
from helpers.files import atomic_write_json


def setup(preset: str, notebook: str, **overrides) -> tuple[Config, Path]:
    """Resolve the preset, seed everything, and create `runs/<preset>/<notebook>/`."""
    cfg = get_config(preset, **overrides).check_device()
    if cfg.preset != "paper":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out = cfg.run_dir / notebook
    out.mkdir(parents=True, exist_ok=True)
    print(f"preset={cfg.preset} model={cfg.model} device={cfg.device} -> {out}")
    return cfg, out


def save_results(out_dir: Path, results: dict) -> Path:
    """Write the notebook's key numbers to `results.json` in its output folder."""
    return atomic_write_json(Path(out_dir) / "results.json", results)
