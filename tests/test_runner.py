import json
from pathlib import Path

import nbformat
import pytest

from helpers.runner import main, numbered_notebooks, run_notebooks


def make_notebook(path, code):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('PRESET = "offline"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_runs_numbered_notebooks_in_order_with_the_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("REFUSAL_RUNS_DIR", str(tmp_path / "runs"))
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    log = tmp_path / "log.txt"
    for name in ("02_b.ipynb", "01_a.ipynb"):
        make_notebook(nbs / name, f"open({str(log)!r}, 'a').write('{name[:2]} ' + PRESET + '\\n')")
    make_notebook(nbs / "scratch.ipynb", "raise SystemExit('not numbered, never run')")
    assert [p.name for p in numbered_notebooks(nbs)] == ["01_a.ipynb", "02_b.ipynb"]
    timings = run_notebooks("smoke", folder=nbs)
    assert log.read_text() == "01 smoke\n02 smoke\n"
    assert (tmp_path / "runs" / "smoke" / "notebooks" / "01_a.ipynb").exists()
    saved = json.loads((tmp_path / "runs" / "smoke" / "runner_timings.json").read_text())
    assert set(saved) == set(timings) == {"01_a.ipynb", "02_b.ipynb"}


def test_rerun_skips_unchanged_notebooks_and_reruns_what_changed_downstream(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REFUSAL_RUNS_DIR", str(tmp_path / "runs"))
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    log = tmp_path / "log.txt"
    for name in ("01_a.ipynb", "02_b.ipynb"):
        make_notebook(nbs / name, f"open({str(log)!r}, 'a').write('{name[:2]} ')")
    run_notebooks("smoke", folder=nbs, log_output=False)
    assert log.read_text() == "01 02 "
    run_notebooks("smoke", folder=nbs, log_output=False)
    assert log.read_text() == "01 02 ", "nothing changed: both skipped"
    assert "unchanged since its last finished run" in capsys.readouterr().out
    make_notebook(nbs / "02_b.ipynb", f"open({str(log)!r}, 'a').write('02b ')")
    run_notebooks("smoke", folder=nbs, log_output=False)
    assert log.read_text() == "01 02 02b ", "only the changed notebook reruns"
    make_notebook(nbs / "01_a.ipynb", f"open({str(log)!r}, 'a').write('01b ')")
    run_notebooks("smoke", folder=nbs, log_output=False)
    assert log.read_text() == "01 02 02b 01b 02b ", "a changed upstream notebook reruns everything after it"
    run_notebooks("smoke", folder=nbs, log_output=False, force=True)
    assert log.read_text().endswith("01b 02b 01b 02b ")


def test_a_failed_notebook_is_not_marked_finished(tmp_path, monkeypatch):
    monkeypatch.setenv("REFUSAL_RUNS_DIR", str(tmp_path / "runs"))
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    flag = tmp_path / "fail"
    flag.write_text("1")
    make_notebook(nbs / "01_a.ipynb", f"import os\nassert not os.path.exists({str(flag)!r})")
    with pytest.raises(Exception):
        run_notebooks("smoke", folder=nbs, log_output=False)
    assert not (tmp_path / "runs" / "smoke" / "notebooks" / "01_a.done.json").exists()
    flag.unlink()
    run_notebooks("smoke", folder=nbs, log_output=False)
    assert (tmp_path / "runs" / "smoke" / "notebooks" / "01_a.done.json").exists()


def test_unknown_preset_fails_early(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "huge"])
    assert exit_.value.code == 2 and "valid presets" in capsys.readouterr().err


@pytest.mark.parametrize("path", numbered_notebooks(), ids=lambda p: p.name)
def test_notebooks_are_clean_and_parameterised(path):
    """Committed without outputs, one `parameters` cell that papermill parses (one `=` per line), PRESET in it."""
    from papermill.translators import PythonTranslator

    raw = json.loads(path.read_text())
    assert all("id" in c for c in raw["cells"]), "every cell needs an id (nbformat 4.5): nbformat.validator.normalize"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the outputs before committing"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged `parameters`"
    lines = [ln for ln in params[0].source.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert all(ln.count("=") == 1 for ln in lines), "papermill cannot infer a parameter from a line with two '='"
    names = [p.name for p in PythonTranslator.inspect(params[0])]
    assert "PRESET" in names and len(names) == len(lines)


def test_report_builds_from_nothing_and_says_not_run(tmp_path, monkeypatch):
    from helpers.report import SECTIONS, build_report

    monkeypatch.setenv("REFUSAL_RUNS_DIR", str(tmp_path))
    page = build_report("smoke").read_text()
    assert page.count("not run") >= len(SECTIONS) + 2  # every section, and the claims of unrun notebooks
    assert page.count("<script>") == 1 and "plotly" in page.lower()
    assert "checks the mechanics at a small size" in page  # smoke's numbers say nothing about the papers
    assert "checks the mechanics" not in build_report("teach").read_text()
    # a finished notebook 03 result fills its claims
    (tmp_path / "smoke" / "refusal_direction").mkdir(parents=True)
    rate = lambda r, n: {"rate": r, "ci95": [max(0, r - 0.1), min(1, r + 0.1)], "n": n}  # noqa: E731
    (tmp_path / "smoke" / "refusal_direction" / "results.json").write_text(json.dumps({
        "direction": {"layer": 14, "position": -4, "bypass_score": -2.0, "induce_score": 0.1, "kl_score": 0.05},
        "refusal_rate": {"harmful · none": rate(0.55, 40), "harmful · ablation": rate(0.1, 40),
                         "harmless · actadd": rate(0.8, 40)},
        "orthogonalization_relative_difference": 6e-7}))
    page = build_report("smoke").read_text()
    assert "55.0% [45.0%, 65.0%] (n=40) → 10.0%" in page and "6.0e-07" in page


def test_progress_bars_reach_the_console_while_a_cell_runs(tmp_path, monkeypatch, capsys):
    """Under the main job a long loop's tqdm bar prints text lines with its rate as it goes, not one
    widget line when it ends."""
    monkeypatch.setenv("REFUSAL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    make_notebook(nbs / "01_a.ipynb", "import helpers, time\nfrom tqdm.auto import tqdm\n"
                                      "for _ in tqdm(range(3), desc='step'):\n    time.sleep(0.3)")
    run_notebooks("smoke", folder=nbs)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "step:" in ln]
    assert all(ln.startswith("    | step:") for ln in lines), lines
    assert any("2/3" in ln and ("it/s" in ln or "s/it" in ln) for ln in lines), lines


def test_steering_and_gradient_claims_read_their_results(tmp_path):
    """Notebook 05's and 06's claims come from their results files, with the decision the numbers support."""
    from helpers.report import claims

    rate = lambda r, n=40: {"rate": r, "ci95": [max(0, r - 0.1), min(1, r + 0.1)], "n": n,  # noqa: E731
                            "stderr": (r * (1 - r) / n) ** 0.5}
    folder = tmp_path / "steering"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({
        "saes": {"chat": {}, "webtext": {}}, "matching_k": {"chat (delta)": 2, "webtext (delta)": None},
        "bypass": {"ablate r": {"substring": rate(0.1)}, "ablate chat top latent": {"substring": rate(0.15)},
                   "ablate webtext top latent": {"substring": rate(0.5)}}}))
    folder = tmp_path / "refusal_gradient"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"chat_vs_webtext": {"chat": {
        "top positive": {"mean": 1.0, "se": 0.1, "n": 27}, "top negative": {"mean": -1.0, "se": 0.1, "n": 27},
        "random": {"mean": 0.0, "se": 0.1, "n": 27}}}}))
    rows = {r["claim"]: r for r in claims(tmp_path)}
    assert rows["ablating the chat SAE's top latent bypasses refusal about as well as r (latent from our sets)"]["held"] is True
    assert rows["the Pile (webtext) SAE's top latent bypasses less than the chat SAE's (latent from our sets)"]["held"] is True
    assert rows["adding top gradient latents raises refusal, negative ones lower it (chat SAE)"]["held"] is True
    assert not [c for c in rows if "latent from their prompts" in c], "no public splits: no rows for their latent"
    # with webtext_chat beside webtext, the chat-format SAE stands for Kissane et al.'s Pile SAE, which bypasses as
    # well as the chat SAE's here: the claim does not hold
    (tmp_path / "steering" / "results.json").write_text(json.dumps({
        "saes": {"chat": {}, "webtext": {}, "webtext_chat": {}}, "matching_k": {"chat (delta)": 2},
        "bypass": {"ablate r": {"substring": rate(0.1)}, "ablate chat top latent": {"substring": rate(0.15)},
                   "ablate webtext top latent": {"substring": rate(0.5)},
                   "ablate webtext_chat top latent": {"substring": rate(0.15)}}}))
    rows = {r["claim"]: r for r in claims(tmp_path)}
    assert rows["the Pile (webtext_chat) SAE's top latent bypasses less than the chat SAE's (latent from our sets)"]["held"] is False


def test_fingerprint_follows_only_the_helpers_a_notebook_uses(tmp_path):
    """Editing a helpers module a notebook imports (directly or through another module) reruns it; editing one it
    never reaches (say the report) does not."""
    from helpers.runner import fingerprint, helper_modules

    pkg = tmp_path / "helpers"
    pkg.mkdir()
    for name, text in {"__init__": "", "config": "", "a": "from helpers.b import f\n",
                       "b": "def f():\n    from helpers import c as cc\n", "c": "", "report": ""}.items():
        (pkg / f"{name}.py").write_text(text)
    nb = tmp_path / "01_x.ipynb"
    make_notebook(nb, "from helpers import a\nimport os")
    assert [p.stem for p in helper_modules(nb, pkg)] == ["__init__", "a", "b", "c", "config"]
    before = fingerprint(nb, "smoke", "", pkg)
    (pkg / "report.py").write_text("X = 1\n")
    assert fingerprint(nb, "smoke", "", pkg) == before
    (pkg / "c.py").write_text("Y = 2\n")
    assert fingerprint(nb, "smoke", "", pkg) != before


def test_a_notebook_reruns_only_when_a_notebook_it_reads_changed(tmp_path, monkeypatch):
    """02 reads 01's caches, not 00's output: editing 00 reruns 00 alone; editing 01 reruns 01 and 02."""
    monkeypatch.setenv("REFUSAL_RUNS_DIR", str(tmp_path / "runs"))
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    log = tmp_path / "log.txt"
    names = ("00_meet_the_model", "01_cache_activations", "02_train_saes")
    for name in names:
        make_notebook(nbs / f"{name}.ipynb", f"open({str(log)!r}, 'a').write('{name[:2]} ')")
    run_notebooks("smoke", folder=nbs, log_output=False)
    make_notebook(nbs / "00_meet_the_model.ipynb", f"open({str(log)!r}, 'a').write('00b ')")
    run_notebooks("smoke", folder=nbs, log_output=False)
    assert log.read_text() == "00 01 02 00b "
    make_notebook(nbs / "01_cache_activations.ipynb", f"open({str(log)!r}, 'a').write('01b ')")
    run_notebooks("smoke", folder=nbs, log_output=False)
    assert log.read_text() == "00 01 02 00b 01b 02 "


def test_public_split_claims_sit_beside_ours(tmp_path):
    """Notebook 03's headline on Arditi et al.'s public splits gets its own claims, decided on its own numbers."""
    from helpers.report import claims

    rate = lambda r, n=40: {"rate": r, "ci95": [max(0, r - 0.1), min(1, r + 0.1)], "n": n}  # noqa: E731
    folder = tmp_path / "refusal_direction"
    folder.mkdir()
    results = {"direction": {"layer": 15, "position": -1, "bypass_score": -2.9, "induce_score": 0.1, "kl_score": 0.05},
               "refusal_rate": {"harmful · none": rate(0.55), "harmful · ablation": rate(0.03),
                                "harmless · actadd": rate(0.8)},
               "orthogonalization_relative_difference": 6e-7,
               "public_refusal_rate": {"harmful · harmful_val · none": rate(0.8, 39),
                                       "harmful · harmful_val · ablation": rate(0.45, 39),
                                       "harmless · harmless_val · none": rate(0.0),
                                       "harmless · harmless_val · actadd": rate(0.6)}}
    (folder / "results.json").write_text(json.dumps(results))
    rows = {r["claim"]: r for r in claims(tmp_path)}
    assert rows["ablating r removes refusal on harmful prompts"]["held"] is True
    public = rows["the same, public split harmful_val"]
    assert public["held"] is False and "80.0%" in public["this run"] and "(n=39)" in public["this run"]
    assert rows["adding r induces refusal, public split harmless_val"]["held"] is True
    from helpers.report import _section_body
    assert "harmful · harmful_val · ablation" in _section_body(tmp_path, "refusal_direction")
    results.pop("public_refusal_rate")  # a run without the public splits has no such rows
    (folder / "results.json").write_text(json.dumps(results))
    assert not any("public split" in r["claim"] for r in claims(tmp_path))


def test_smallest_k_claims_read_unreached_thresholds():
    """notebook 04 writes NaN where no k in the sweep reached the threshold: that is more latents than any k."""
    from helpers.report import _fewer, _k_text

    assert _k_text(256.0) == "256" and _k_text(float("nan")) == "not reached" and _k_text(None) == "not reached"
    assert _fewer(256.0, float("nan")) is True and _fewer(float("nan"), 256.0) is False
    assert _fewer(float("nan"), None) is None and _fewer(512.0, 256.0) is False


def test_fingerprint_follows_data_files_and_library_versions(tmp_path, monkeypatch):
    """Editing an instruction set or upgrading a library reruns the notebooks; the public splits count only for a
    notebook that reads them."""
    import importlib.metadata

    from helpers import instructions, runner

    data = tmp_path / "data"
    (data / "instructions").mkdir(parents=True)
    (data / "instructions" / "harmful.json").write_text('[{"instruction": "a", "category": "x"}]')
    public = tmp_path / "public"
    public.mkdir()
    (public / "harmful_val.json").write_text("[]")
    monkeypatch.setattr(instructions, "DATA_ROOT", data)
    monkeypatch.setenv("REFUSAL_PUBLIC_INSTRUCTIONS", str(public))
    pkg = tmp_path / "helpers"
    pkg.mkdir()
    for name in ("__init__", "config", "public_splits", "a"):
        (pkg / f"{name}.py").write_text("")
    plain, reader = tmp_path / "01_x.ipynb", tmp_path / "03_y.ipynb"
    make_notebook(plain, "from helpers import a")
    make_notebook(reader, "from helpers import public_splits")
    fp = {nb: runner.fingerprint(nb, "smoke", "", pkg) for nb in (plain, reader)}
    assert runner.fingerprint(plain, "smoke", "", pkg) == fp[plain], "deterministic"

    (data / "instructions" / "harmful.json").write_text('[{"instruction": "b", "category": "x"}]')
    fp2 = {nb: runner.fingerprint(nb, "smoke", "", pkg) for nb in (plain, reader)}
    assert fp2[plain] != fp[plain] and fp2[reader] != fp[reader]

    (public / "harmful_val.json").write_text('[{"instruction": "c", "category": null}]')
    assert runner.fingerprint(plain, "smoke", "", pkg) == fp2[plain]
    assert runner.fingerprint(reader, "smoke", "", pkg) != fp2[reader]

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9.9" if name == "sae-lens" else real(name))
    assert runner.library_versions()["sae-lens"] == "9.9.9"
    assert runner.fingerprint(plain, "smoke", "", pkg) != fp2[plain]


def test_fingerprint_follows_tokenizers_and_python_and_not_where_the_clone_lies(tmp_path, monkeypatch):
    """A tokenizers upgrade or a new Python (the offline webtext includes the interpreter's standard library) reruns
    the notebooks; copying the clone elsewhere does not (paths are hashed relative to it)."""
    import importlib.metadata
    import platform
    import shutil

    from helpers import instructions, runner

    def clone_at(root: Path) -> tuple[Path, Path]:
        (root / "data" / "instructions").mkdir(parents=True)
        (root / "data" / "instructions" / "harmful.json").write_text('[{"instruction": "a", "category": "x"}]')
        (root / "helpers").mkdir()
        for name in ("__init__", "config", "a"):
            (root / "helpers" / f"{name}.py").write_text("")
        make_notebook(root / "01_x.ipynb", "from helpers import a")
        return root / "01_x.ipynb", root / "helpers"

    nb, pkg = clone_at(tmp_path / "one")
    monkeypatch.setattr(instructions, "DATA_ROOT", tmp_path / "one" / "data")
    monkeypatch.setattr(runner, "HELPERS_DIR", pkg)
    before = runner.fingerprint(nb, "smoke", "", pkg)
    shutil.copytree(tmp_path / "one", tmp_path / "moved" / "elsewhere")
    moved = tmp_path / "moved" / "elsewhere"
    monkeypatch.setattr(instructions, "DATA_ROOT", moved / "data")
    monkeypatch.setattr(runner, "HELPERS_DIR", moved / "helpers")
    assert runner.fingerprint(moved / "01_x.ipynb", "smoke", "", moved / "helpers") == before, "a moved clone"
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0.1" if name == "tokenizers" else real(name))
    assert runner.fingerprint(moved / "01_x.ipynb", "smoke", "", moved / "helpers") != before, "tokenizers"
    monkeypatch.setattr(importlib.metadata, "version", real)
    monkeypatch.setattr(platform, "python_version", lambda: "3.99.0")
    assert runner.fingerprint(moved / "01_x.ipynb", "smoke", "", moved / "helpers") != before, "python"
