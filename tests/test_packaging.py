"""The path a Colab or pip user takes: a non-editable install, used from outside the repository."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_non_editable_install_ships_instruction_sets_and_roots_runs_in_the_working_directory(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(REPO)], check=True, capture_output=True, timeout=300)
    assert (target / "helpers" / "data" / "instructions" / "harmful.json").exists()
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("import helpers.instructions as i, helpers.config as c; "
            "assert 'site' in i.__file__, i.__file__; "
            "print(len(i.load_instructions('harmful')), len(i.load_instructions('harmless', split='val', n=10)), "
            "len(i.case_studies()), c.get_config('smoke').run_dir)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("REFUSAL_RUNS_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    n_harmful, n_val, n_cases, run_dir = out.stdout.split()
    assert (int(n_harmful), int(n_val), int(n_cases)) == (200, 10, 3)
    assert Path(run_dir) == work / "runs" / "smoke", "outputs go to the working directory, not site-packages"
