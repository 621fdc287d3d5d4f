import pytest

from helpers.config import OFFLINE_MODEL, PAPER_MODEL, PRESETS, TINY_MODEL, ConfigError, get_config


def test_presets_exist_with_expected_models():
    assert set(PRESETS) == {"offline", "paper", "smoke", "teach", "quick", "smollm2"}
    assert get_config("offline").model == OFFLINE_MODEL
    teach = get_config("teach", device="cpu")
    assert teach.model == OFFLINE_MODEL and teach.sae_hook == get_config("offline").sae_hook
    assert teach.sae_corpora == get_config("offline").sae_corpora and teach.selection_fallback is False
    quick = get_config("quick", device="cpu")  # a cold start's upstream: teach with smaller 01-03
    assert quick.model == OFFLINE_MODEL and quick.sae_corpora == teach.sae_corpora and quick.sae_hook == teach.sae_hook
    assert quick.cache_tokens < teach.cache_tokens and quick.sae.d_sae < teach.sae.d_sae and quick.n_val < teach.n_val
    assert get_config("smoke").model == TINY_MODEL  # mechanics only: a random Qwen2 with the offline tokenizer
    smol = get_config("smollm2")  # a second family: SmolLM2-135M-Instruct, no system turn, 00 and 03 only
    assert smol.model == "SmolLM2-135M-Instruct-GGUF" and smol.system_prompt is None and smol.filter_train is None
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


@pytest.mark.parametrize("overrides,field", [
    ({"n_train": "abc"}, "n_train"), ({"n_val": 0}, "n_val"), ({"target_l0": 0}, "target_l0"),
    ({"filter_train": "Metric"}, "filter_train"), ({"sae_corpora": "webtext"}, "sae_corpora"),
    ({"sae_corpora": ("webtext", "pile")}, "sae_corpora"), ({"sae_hook": "blocks.13.resid"}, "sae_hook"),
    ({"dtype": "float99"}, "dtype"), ({"cache_dtype": "int8"}, "cache_dtype"), ({"outlier_factor": 0}, "outlier_factor"),
    ({"device": "tpu"}, "device"), ({"cache_context_size": 1}, "cache_context_size"),
    ({"cache_batch_windows": 0}, "cache_batch_windows"), ({"cache_tokens": -5}, "cache_tokens"),
    ({"filter_val": "yes"}, "filter_val"), ({"webtext_source": "web"}, "webtext_source"),
])
def test_bad_config_values_fail_at_construction_naming_field_and_value(overrides, field):
    with pytest.raises(ConfigError, match=rf"Config\.{field}=.*must be") as err:
        get_config("smoke", **overrides)
    assert repr(next(iter(overrides.values()))) in str(err.value)


@pytest.mark.parametrize("changes,field", [
    ({"architecture": "relu"}, "architecture"), ({"l1_coefficient": -1.0}, "l1_coefficient"), ({"d_sae": 0}, "d_sae"),
    ({"training_tokens": 100}, "training_tokens"), ({"lr": 0}, "lr"), ({"l1_warm_up_fraction": 1.5}, "l1_warm_up_fraction"),
])
def test_bad_sae_config_values_fail(changes, field):
    from dataclasses import replace

    with pytest.raises(ConfigError, match=rf"SAEConfig\.{field}=.*must be"):
        replace(get_config("smoke").sae, **changes)


def test_cuda_on_a_cpu_machine_fails_at_once_with_advice():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="no CUDA GPU: use device='cpu'"):
        get_config("paper").check_device()


def test_paper_pair_prefers_the_chat_format_webtext():
    """Kissane et al.'s Pile SAE saw Pile text in the chat format: webtext_chat stands for it where present."""
    from helpers.config import paper_pair

    assert paper_pair(["webtext", "chat"]) == ("webtext", "chat")
    assert paper_pair(["chat", "webtext", "webtext_chat", "mixture"]) == ("webtext_chat", "chat")
    assert paper_pair(["webtext", "mixture"]) is None
    assert get_config("paper").sae_pair == ("webtext_chat", "chat")
    assert get_config("offline").sae_pair[1] == "chat"
    with pytest.raises(ConfigError, match="webtext"):
        _ = get_config("offline").replace(sae_corpora=("chat",)).sae_pair


def test_every_example_configuration_loads():
    """configs/*.json (your own model and SAEs): each builds a configuration with a runs/ folder of its own."""
    from pathlib import Path

    from helpers.config import PRESETS

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))
    assert len(files) >= 3
    for f in files:
        cfg = get_config(str(f))
        assert cfg.preset == f.stem and cfg.preset not in PRESETS
        for source in cfg.saes:
            assert isinstance(source, str) or (isinstance(source, tuple) and len(source) == 2)
