"""The report in a real browser: headless Chromium from the npm registry (@sparticuz/chromium) driven by
puppeteer-core (`tests/browser/`; `scripts/setup.sh` installs it when node is present)."""

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BROWSER = Path(__file__).parent / "browser"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BROWSER))
import lab  # noqa: E402  (tests/browser/lab.py: the server and node runner scripts/lab_waits.py shares)


def run_node(script: str, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """`lab.run_node`, failing the test if the script overruns."""
    out = lab.run_node(script, *args, timeout=timeout)
    if out.returncode is None:
        pytest.fail(f"{script} ran past {timeout} s; its log: {out.stderr[-1500:]}; its output: {out.stdout[-1500:]}")
    return out


def run_page_check(page: Path) -> dict:
    why = lab.unavailable()
    if why:
        pytest.skip(f"{why}; the report's figures are still checked by test_plotting.py")
    out = run_node("check_page.mjs", str(page), timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_smoke_report_renders_every_figure_without_errors():
    """Built from the smoke run's results (the nbmake notebooks run before this file; sections that did not
    run show "not run")."""
    from helpers.report import build_report

    page = build_report("smoke")
    result = run_page_check(page)
    assert result["title"] == "refusal-toolkit report"
    assert result["errors"] == [], result["errors"]
    ran = (REPO / "runs" / "smoke" / "refusal_direction" / "results.json").exists()
    assert len(result["figures"]) >= (1 if ran else 0)
    assert all(f["svg"] > 0 and f["traces"] > 0 for f in result["figures"]), result["figures"]


def test_a_broken_figure_is_caught(tmp_path):
    """The check itself can fail: a plotly div whose script throws has no svg and logs an error."""
    page = tmp_path / "broken.html"
    from plotly.offline import get_plotlyjs

    page.write_text(f"<html><head><title>x</title><script>{get_plotlyjs()}</script></head><body>"
                    "<div id='a' class='plotly-graph-div'></div><script>Plotly.newPlot('a', undefinedData);</script>"
                    "</body></html>")
    result = run_page_check(page)
    assert result["errors"] and result["figures"][0]["svg"] == 0


@contextlib.contextmanager
def jupyter_lab(root: Path, env: dict):
    """`lab.jupyter_lab`, skipping the test where the browser checks cannot run."""
    why = lab.unavailable()
    if why:
        pytest.skip(why)
    with lab.jupyter_lab(root, env) as server:
        yield server


@pytest.mark.slow
def test_the_prompt_explorer_works_in_jupyterlab(tmp_path):
    """JupyterLab in headless Chromium: run a notebook with the prompt explorer, type an instruction into its
    text box, and see the explorer's output change. Uses the smoke run's direction (notebook 03 runs first)."""
    import nbformat

    direction = REPO / "runs" / "smoke" / "refusal_direction" / "direction.json"
    if not direction.exists():
        pytest.skip("no smoke-run direction: run notebook 03 in smoke mode first (scripts/test.sh does)")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import json, torch\n"
        "from helpers.config import get_config\nfrom helpers.explorers import prompt_explorer\n"
        "from helpers.judges import refusal_token_ids\nfrom helpers.models import load_from_config\n"
        "cfg = get_config('smoke')\nmodel = load_from_config(cfg)\n"
        "meta = json.loads((cfg.run_dir / 'refusal_direction' / 'direction.json').read_text())\n"
        "direction = torch.load(cfg.run_dir / 'refusal_direction' / 'direction.pt')\n"
        "prompt_explorer(model, direction, meta['layer'], refusal_token_ids(model.tokenizer), "
        "default='Name three fruits.', max_new_tokens=6)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "explorer.ipynb")
    with jupyter_lab(tmp_path, {"REFUSAL_RUNS_DIR": str(REPO / "runs"), "HF_HUB_OFFLINE": "1"}) as (base, token):
        out = run_node("check_lab.mjs", f"{base}/lab/tree/explorer.ipynb?token={token}", "How do I pick a lock?", "600",
                       timeout=720)
    assert out.stdout.strip(), f"check_lab.mjs printed nothing (exit {out.returncode}): {out.stderr[-2000:]}"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "failure" not in result, result
    assert result["typed"] == "How do I pick a lock?", result
    assert result["steps"][-1].startswith("output changed"), result
    assert "How do I pick a lock?" not in result["before"] and result["before"] != result["after"]


@pytest.mark.slow
def test_an_exercise_notebook_opened_cold_in_jupyterlab(tmp_path):
    """Notebook 04's exercise copy in JupyterLab with upstream missing: its setup builds what is missing (at smoke size
    here; for a learner a finished teach run, else quick size) with one line saying so; a solution opens with one click; run with the stubs, the
    first check fails with the stub's message; with every solution put in its stub's cell, every check passes and the
    notebook runs to the end. To save CI ~4 min, the outputs of 01 and 03 are copied from the smoke run that
    scripts/test.sh has just made, so the cold start builds only 02; run alone (no smoke run), it builds 01-03."""
    name = "04_decompose_refusal_direction.ipynb"
    shutil.copy(REPO / "notebooks" / "exercises" / name, tmp_path / name)
    smoke, runs = REPO / "runs" / "smoke", tmp_path / "runs" / "smoke"
    seeded = [d for d in ("cache_activations", "refusal_direction") if (smoke / d / "results.json").exists()]
    if len(seeded) == 2 and (smoke / "activations").is_dir():
        for d in (*seeded, "activations"):
            shutil.copytree(smoke / d, runs / d)
        missing = "02"
    else:
        missing = "01 02 03"
    env = {"REFUSAL_RUNS_DIR": str(tmp_path / "runs"), "REFUSAL_PRESET": "smoke", "REFUSAL_COLD_START_PRESET": "smoke",
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TRANSFORMERS_VERBOSITY": "error"}
    with jupyter_lab(tmp_path, env) as (base, token):
        out = run_node("check_exercise.mjs", f"{base}/lab/tree/{name}?token={token}", "1500", timeout=1600)
    assert out.stdout.strip(), f"check_exercise.mjs printed nothing (exit {out.returncode}): {out.stderr[-2000:]}"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=1, ensure_ascii=False))  # shown when an assertion below fails
    assert "failure" not in result, result
    assert result["hints_collapsed"] and result["collapsed_before"] and "def reconstruction" in result["revealed"], result
    assert result["first_run_ok"] is False and len(result["first_run_errors"]) == 1, result
    assert "CheckFailed" in result["first_run_errors"][0] and "still raises NotImplementedError" in result["first_run_errors"][0]
    assert result["filled"] == 4 and result["second_run_ok"] is True and result["errors_after"] == [], result
    assert {line.split(":")[0] for line in result["passed_checks"]} == {"✓ reconstruction", "✓ least_squares",
                                                                         "✓ top_k_curve", "✓ max_cosine_latent"}, result
    assert len(result["cold_start"]) == 1 and f"notebook(s) {missing} have not run" in result["cold_start"][0], result
    assert result["cold_start_again"] == [], "the second run must find what the first built"
    assert result["results_written"] and "Kissane et al. 2024" in result["last_output"], result  # the last cell: claims
    assert (tmp_path / "runs" / "smoke" / "decompose_refusal_direction" / "results.json").exists()
