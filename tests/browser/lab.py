"""JupyterLab and headless Chromium for the browser checks, shared by tests/test_browser.py and
scripts/lab_waits.py: a JupyterLab server on a folder, and a node script of this folder run with a time limit."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BROWSER = Path(__file__).parent


def unavailable() -> str | None:
    """Why the browser checks cannot run here, or None."""
    if sys.platform != "linux":
        return (f"the headless Chromium these checks use (npm @sparticuz/chromium) is built for Linux only, not "
                f"{sys.platform}")
    if shutil.which("node") is None:
        return ("node is not installed: the browser checks need Node.js (apt-get install nodejs npm), then "
                "`bash scripts/setup.sh` installs the headless Chromium")
    if not (BROWSER / "node_modules" / "puppeteer-core").exists():
        return "headless Chromium not installed: run `bash scripts/setup.sh` (npm ci in tests/browser)"
    return None


def run_node(script: str, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """Run a node script of this folder in its own process group, killed whole (with its Chromium) if it overruns
    (then `returncode` is None and stderr ends with a line saying so)."""
    proc = subprocess.Popen(["node", str(BROWSER / script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, None, out, err + f"\n{script} ran past {timeout} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@contextlib.contextmanager
def jupyter_lab(root: Path, env: dict, settings: dict | None = None):
    """A JupyterLab server on `root` (its own process group, so the kernels it starts go with it): yields its base
    URL and token as `(url, token)`. `settings`: user settings by plugin id (e.g. to record cell timings), written to
    a settings folder of this server only."""
    port, token = _free_port(), "refusal-toolkit-test"
    env = {**os.environ, **env}
    if settings:
        folder = root / ".lab-settings"
        for plugin, values in settings.items():
            package, name = plugin.split(":")
            (folder / package).mkdir(parents=True, exist_ok=True)
            (folder / package / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
        env["JUPYTERLAB_SETTINGS_DIR"] = str(folder)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
         "--LabApp.expose_app_in_browser=True"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("JupyterLab did not start within 60 s")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", token
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
