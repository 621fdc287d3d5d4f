"""A notebook opened first builds what it reads at a small size, with one line saying so (helpers.notebook.cold_start);
the real thing (a cold exercise notebook in JupyterLab) is in tests/test_browser.py."""

import pytest

from helpers import notebook
from helpers.config import get_config


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("REFUSAL_RUNS_DIR", str(tmp_path))
    monkeypatch.delenv("REFUSAL_NO_COLD_START", raising=False)
    monkeypatch.delenv("REFUSAL_COLD_START_PRESET", raising=False)
    return tmp_path


def finished(cfg, *stems):
    for s in stems:
        (cfg.run_dir / s[3:]).mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / s[3:] / "results.json").write_text("{}")


def test_upstream_is_transitive():
    assert notebook.upstream("05_steering") == ["01_cache_activations", "02_train_saes", "03_refusal_direction",
                                                "04_decompose_refusal_direction"]
    assert notebook.upstream("03_refusal_direction") == []


def test_nothing_happens_when_upstream_has_run(runs, capsys):
    cfg = get_config("offline")
    finished(cfg, "01_cache_activations", "02_train_saes", "03_refusal_direction")
    assert notebook.cold_start(cfg, "refusal_gradient") is cfg
    assert capsys.readouterr().out == ""


@pytest.fixture
def fake_runner(monkeypatch):
    calls = []

    def run(preset, only, log_output):
        calls.append((preset, only))
        finished(get_config(preset), *[s for s in notebook.upstream("05_steering") if s[:2] in only])

    monkeypatch.setattr("helpers.runner.run_notebooks", run)
    return calls


def test_cold_start_builds_only_what_is_missing_at_quick_size_and_says_so(runs, capsys, fake_runner):
    offline = get_config("offline")
    finished(get_config("teach", device="cpu"), "01_cache_activations", "02_train_saes")  # an unfinished teach run
    finished(get_config("quick", device="cpu"), "01_cache_activations")  # an earlier cold start got as far as 01
    cfg = notebook.cold_start(offline, "decompose_refusal_direction")
    assert cfg.preset == "quick" and fake_runner == [("quick", ["02", "03"])]
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("Cold start: notebook(s) 01 02 03 have not run for preset 'offline'")
    assert "building 02 03 at quick size" in out[0] and "--preset offline --only 01 02 03" in out[0]
    # the next notebook opened cold finds the quick outputs and builds nothing
    assert notebook.cold_start(offline, "refusal_gradient").preset == "quick" and len(fake_runner) == 1
    assert "using the quick preset's outputs" in capsys.readouterr().out


def test_cold_start_uses_a_finished_teach_run_first(runs, capsys, fake_runner):
    finished(get_config("teach", device="cpu"), "01_cache_activations", "02_train_saes", "03_refusal_direction")
    cfg = notebook.cold_start(get_config("offline"), "refusal_gradient")
    assert cfg.preset == "teach" and fake_runner == []
    assert "using the teach preset's outputs" in capsys.readouterr().out
    # 05 reads 04 too, which the teach run has not got: built at quick size, with 01-03, in runs/quick
    assert notebook.cold_start(get_config("offline"), "steering").preset == "quick"
    assert fake_runner == [("quick", ["01", "02", "03", "04"])]


def test_cold_start_can_be_turned_into_a_one_line_error(runs, monkeypatch):
    monkeypatch.setenv("REFUSAL_NO_COLD_START", "1")
    with pytest.raises(FileNotFoundError, match=r"Notebook\(s\) 01 02 03 04 have not run for preset 'offline'.*"
                                                r"--preset offline --only 01 02 03 04"):
        notebook.cold_start(get_config("offline"), "steering")
