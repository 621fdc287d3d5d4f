"""scripts/check_gpu.py is the GPU check of the paper preset's code path (run on an H100, docs/00_meet_the_model.md
"Checked on a GPU"); its `--small` dry run on the CPU keeps the script itself from rotting between GPU sessions."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_dry_runs_on_the_cpu(tmp_path):
    from helpers.config import OFFLINE_MODEL
    from helpers.models import resolve_model_source

    _, folder = resolve_model_source(OFFLINE_MODEL)  # its tokenizer files; the weights are random
    out = tmp_path / "check.json"
    command = [sys.executable, str(REPO / "scripts" / "check_gpu.py"), "--small", "--tokenizer", str(folder),
               "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checks = json.loads(out.read_text())
    assert len(checks) >= 17 and all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]
    names = {c["check"] for c in checks}
    assert {"generate = hf.generate (ablate)", "cross_entropy_table restart = full passes"} <= names
