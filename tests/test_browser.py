"""The report in a real browser: headless Chromium from the npm registry (@sparticuz/chromium) driven by
puppeteer-core (`tests/browser/`; `scripts/setup.sh` installs it when node is present)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

BROWSER = Path(__file__).parent / "browser"
REPO = Path(__file__).resolve().parents[1]


def run_page_check(page: Path) -> dict:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the browser tests need Node.js (apt-get install nodejs npm), then "
                    "`bash scripts/setup.sh` installs the headless Chromium")
    if not (BROWSER / "node_modules" / "puppeteer-core").exists():
        pytest.skip("headless Chromium not installed: run `bash scripts/setup.sh` (npm ci in tests/browser)")
    out = subprocess.run(["node", str(BROWSER / "check_page.mjs"), str(page)], capture_output=True, text=True,
                         timeout=180)
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
