import pytest

from helpers.config import OFFLINE_MODEL, PAPER_MODEL, PRESETS, get_config


def test_presets_exist_with_expected_models():
    assert set(PRESETS) == {"offline", "paper", "smoke"}
    assert get_config("offline").model == OFFLINE_MODEL
    assert get_config("smoke").model == OFFLINE_MODEL
    paper = get_config("paper")
    assert paper.model == PAPER_MODEL == "Qwen/Qwen1.5-0.5B-Chat"
    assert paper.sae_hook == "blocks.13.hook_resid_pre"
    assert (paper.sae.d_sae, paper.sae.l1_coefficient, paper.sae.lr) == (32_768, 3.0, 5e-5)
    assert paper.sae.training_tokens == 100_000 * 4096


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown preset 'nope'.*offline.*paper.*smoke"):
        get_config("nope")


def test_overrides_and_unknown_fields():
    assert get_config("smoke", n_train=7).n_train == 7
    with pytest.raises(ValueError, match="Unknown config field"):
        get_config("smoke", n_trian=7)


def test_env_var_chooses_default(monkeypatch):
    monkeypatch.setenv("REFUSAL_PRESET", "smoke")
    assert get_config().preset == "smoke"


def test_run_dir_is_per_preset(monkeypatch, tmp_path):
    monkeypatch.setenv("REFUSAL_RUNS_DIR", str(tmp_path))
    assert get_config("smoke").run_dir == tmp_path / "smoke"
