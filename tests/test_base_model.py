"""Kissane et al.'s dataset-versus-model arm (notebooks 01, 02, 04 with `cfg.base_model`): caches through a second
model, base_<corpus> SAEs trained on them, and the model x data grid. Offline there is no base model, so the second
model here is the offline GGUF file loaded by path: the same weights under another name, which is what the plumbing
needs (its own cache folders, its own model name in the SAE's metadata)."""

import pytest


@pytest.mark.slow
def test_base_model_arm_caches_trains_and_fills_the_grid(tmp_path, monkeypatch):
    from helpers.activations import cache_dir, cache_from_config, open_cache, split_heldout
    from helpers.config import ConfigError, get_config
    from helpers.decomposition import model_by_data
    from helpers.models import load_from_config, resolve_model_source, tiny_model_folder
    from helpers.saes import load_sae, train_or_reuse

    monkeypatch.setenv("REFUSAL_RUNS_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="no base model"):
        get_config("smoke").base()
    cfg = get_config("smoke", base_model=str(tiny_model_folder()), sae_corpora=("chat",))
    base_cfg = cfg.base()
    model = load_from_config(cfg)
    assert cache_dir(base_cfg, "chat", "train") != cache_dir(cfg, "chat", "train")
    base = load_from_config(base_cfg)
    base_name = resolve_model_source(cfg.base_model)[0]
    assert base.name == base_name != model.name
    folders = {}
    for name, (m, c) in {"chat": (model, cfg), "base_chat": (base, base_cfg)}.items():
        for split in ("train", "heldout"):
            assert cache_from_config(m, c, "chat", split).complete
        tune, _ = split_heldout(open_cache(c, m.name, "chat", "heldout").load_all())
        folders[name] = tmp_path / "saes" / name
        train_or_reuse(name, open_cache(c, m.name, "chat", "train"), tune["activations"], cfg.sae, folders[name],
                       cfg.target_l0, max_rounds=1)
    del base
    saes = {name: load_sae(folder, model, cfg.sae_hook) for name, folder in folders.items()}
    assert saes["base_chat"].cfg.metadata.model_name == base_name
    grid = model_by_data(saes, {"chat": 0.8, "base_chat": 0.7})
    assert grid == {model.name: {"chat": 0.8}, base_name: {"chat": 0.7}}
