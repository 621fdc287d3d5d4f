"""Colab set-up, run by every notebook's setup cell: install this repository (editable) into Colab's Python, changing
no more of Colab's own packages than our pins require, and say what it changes and why.

`pip install` without `--upgrade` leaves an installed package alone when it satisfies our requirement, so Colab keeps
its torch and huggingface_hub; only an exact pin (transformers, transformer-lens, sae-lens, gguf) can replace one.
The offline preset's data packages are not installed here (the paper preset does not need them): the first
offline step installs them and says so (helpers/packages.py). Standard library only: it runs before anything else.

Run: `python scripts/colab_setup.py [--dry-run]`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def exact_pins(pyproject: Path = REPO / "pyproject.toml") -> dict[str, str]:
    """`{name: version}` for the dependencies pinned with `==`."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;,]+)", dep)
        if m:
            pins[_normal(m.group(1))] = m.group(2)
    return pins


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def changes(report: dict, pins: dict[str, str], installed: Callable[[str], str | None] = _installed) -> list[str]:
    """One line for each already installed package that pip's `--report` would replace, saying why."""
    lines = []
    for item in report.get("install", []):
        name, new = item["metadata"]["name"], item["metadata"]["version"]
        old = installed(name)
        if old is None or old == new or _normal(name) == "refusal-toolkit":
            continue
        why = (f"refusal-toolkit pins {name}=={pins[_normal(name)]}" if _normal(name) in pins
               else "a pinned package (transformers, transformer-lens, sae-lens) requires it")
        lines.append(f"changing Colab's {name} {old} -> {new}: {why}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="only say what would change")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--report", str(report_path),
                        "-e", str(REPO)], check=True)
        report = json.loads(report_path.read_text())
    lines = changes(report, exact_pins())
    print("\n".join(lines) if lines else "Colab's own packages satisfy every pin: none is changed.", flush=True)
    if not args.dry_run:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", str(REPO)], check=True)
        print("refusal-toolkit installed (editable); restart the runtime only if a changed package was already "
              "imported in this session.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
