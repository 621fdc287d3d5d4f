import math

import pytest
import torch

from helpers.activations import ActivationCache, cache_activations
from helpers.config import SAEConfig
from helpers.saes import (SAEMismatchError, examples_html, load_sae, reconstruction_stats, save_sae, spliced_losses,
                          top_activating_examples, train_sae, training_sae, tune_l1)

HOOK = "blocks.13.hook_resid_pre"
TINY = SAEConfig(d_sae=64, l1_coefficient=5.0, lr=1e-3, training_tokens=32768, train_batch_size_tokens=256,
                 context_size=32)


@pytest.fixture(scope="module")
def tiny_cache(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    cache_activations(model, "webtext", folder, HOOK, n_tokens=2048, context_size=32, batch_windows=4,
                      shard_tokens=512)
    return ActivationCache(folder, model.name, HOOK)


def test_architectures_and_kissane_flags():
    sae = training_sae(TINY, d_in=16, hook_name=HOOK, model_name="m", context_size=8)
    assert sae.cfg.architecture() == "standard"
    assert sae.cfg.apply_b_dec_to_input is False
    assert sae.cfg.normalize_activations == "expected_average_only_in"
    for arch in ("topk", "batchtopk", "jumprelu"):
        assert training_sae(SAEConfig(architecture=arch, d_sae=32, k=4), 16, HOOK, "m", 8).cfg.architecture() == arch
    with pytest.raises(ValueError, match="valid: standard"):
        training_sae(SAEConfig(architecture="gated-ish"), 16, HOOK, "m", 8)


@pytest.mark.slow
def test_train_save_load_evaluate(model, tiny_cache, tmp_path):
    sae, history, seconds = train_sae(tiny_cache, TINY)
    assert history and history[-1]["tokens"] > 0 and seconds > 0
    acts = tiny_cache.load_all(1024)["activations"]
    before = reconstruction_stats(training_sae(TINY, 896, HOOK, model.name, 32), acts)
    stats = reconstruction_stats(sae, acts)
    assert stats.explained_variance > before.explained_variance and stats.explained_variance > 0.2
    assert 0 < stats.l0 < TINY.d_sae and 0 <= stats.dead_fraction <= 1
    folder = save_sae(sae, tmp_path / "sae", {"note": "test"})
    loaded = load_sae(folder, model, HOOK)
    assert torch.allclose(loaded.W_dec, sae.W_dec)
    again = reconstruction_stats(loaded, acts)
    assert again.explained_variance == pytest.approx(stats.explained_variance, abs=1e-4)
    with pytest.raises(SAEMismatchError, match="not 'blocks.6.hook_resid_pre'"):
        load_sae(folder, model, "blocks.6.hook_resid_pre")
    with pytest.raises(FileNotFoundError, match="no sae_lens SAE"):
        load_sae(tmp_path, model)
    ids = model.tokenizer("The cat sat on the mat. " * 8, add_special_tokens=False)["input_ids"][:32]
    ce = spliced_losses(model, loaded, [ids], HOOK)
    assert ce["clean"] < ce["zero"] and math.isfinite(ce["loss_recovered"])
    data = tiny_cache.load_all(512)
    examples = top_activating_examples(loaded, data["activations"], data["token_ids"], data["positions"],
                                       model.tokenizer, [0, 1], k=3)
    assert set(examples) == {0, 1} and all(len(v) <= 3 for v in examples.values())
    assert "<mark>" in examples_html(examples, "t") or not any(examples.values())


@pytest.mark.slow
def test_load_sae_rejects_wrong_width(model, tmp_path):
    sae = training_sae(TINY, d_in=16, hook_name=HOOK, model_name="m", context_size=8)
    folder = save_sae(sae, tmp_path / "narrow")
    with pytest.raises(SAEMismatchError, match="d_in=16"):
        load_sae(folder, model, HOOK)


@pytest.mark.slow
def test_tune_l1_moves_l0_towards_target(tiny_cache):
    acts = tiny_cache.load_all(1024)["activations"]
    coeff, table = tune_l1(tiny_cache, acts, TINY, (1.0, 20.0), tokens=2048, target_l0=10)
    assert table[0]["l0"] > table[1]["l0"], "a larger L1 coefficient gives a sparser SAE"
    assert 0 < coeff
