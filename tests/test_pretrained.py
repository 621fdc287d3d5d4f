"""Kissane et al.'s released SAEs: the older sae_lens layout they were saved in, converted as their code does.

Nothing here reaches wandb, so the fixture is written in that layout: a known SAE trained on activations scaled by
s, with sae_lens' fold applied as it was then (W_enc * s, W_dec / s, b_dec left unscaled: the bug their code undoes).
"""

import json

import pytest
import torch
from safetensors.torch import save_file

from helpers import pretrained
from helpers.saes import SAEMismatchError, load_sae
from tolerances import assert_within, max_abs

D_IN, D_SAE, S = 16, 48, 1.5326804001319736


def legacy_folder(tmp_path, normalize="expected_average_only_in", hook="blocks.13.hook_resid_pre"):
    """The released layout (cfg.json keys of sae_lens' 2024 SAEConfig, tensors W_enc/W_dec/b_enc/b_dec) and the
    raw-unit SAE it stands for: f = relu(x s We + be), x_hat = (f Wd + bd) / s."""
    torch.manual_seed(0)
    We, Wd = torch.randn(D_IN, D_SAE) * 0.3, torch.randn(D_SAE, D_IN) * 0.3
    be, bd = torch.randn(D_SAE) * 0.1, torch.randn(D_IN)
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "activation_fn_str": "relu",
        "apply_b_dec_to_input": False, "finetuning_scaling_factor": False, "context_size": 2048,
        "model_name": "qwen1.5-0.5b-chat", "hook_name": hook, "hook_layer": 13, "hook_head_index": None,
        "prepend_bos": True, "dataset_path": "ckkissane/pile-chat-format-with-assistant-qwen1.5-0.5b-chat",
        "dataset_trust_remote_code": True, "normalize_activations": normalize, "dtype": "float32",
        "device": "cuda", "sae_lens_training_version": "3.5.0"}))
    save_file({"W_enc": (We * S).contiguous(), "W_dec": (Wd / S).contiguous(), "b_enc": be, "b_dec": bd},
              str(folder / "sae_weights.safetensors"))

    def reference(x):
        f = torch.relu(x @ (We * S) + be)
        return f, (f @ Wd + bd) / S

    return folder, reference


def test_conversion_reconstructs_in_the_models_units_with_unit_decoder_rows(tmp_path):
    folder, reference = legacy_folder(tmp_path)
    assert pretrained.is_legacy_folder(folder)
    sae = pretrained.convert_legacy_sae(folder, S)
    x = torch.randn(20, D_IN) * 3
    f_ref, x_hat_ref = reference(x)
    with torch.no_grad():
        f = sae.encode(x)
        # measured: max 5.7e-06 over 5 settings (bound 0.0001, 17x; scripts/tolerance_margins.py)
        assert_within("b_dec / s, as Kissane et al.'s code does", max_abs(sae.decode(f), x_hat_ref), 1e-4)
        norms = sae.W_dec.norm(dim=-1)
        # measured: max 6.0e-08 over 5 settings (bound 1e-05, 168x; scripts/tolerance_margins.py)
        assert_within("decoder norms folded into the encoder", max_abs(norms, torch.ones(D_SAE)), 1e-5)
        # measured: max 2.9e-06 over 5 settings (bound 0.0001, 35x; scripts/tolerance_margins.py)
        assert_within("latents scaled by the old row norms", max_abs(f, f_ref * reference_norms(folder)), 1e-4)
    assert sae.cfg.metadata.hook_name == "blocks.13.hook_resid_pre" and not sae.cfg.apply_b_dec_to_input
    unscaled = pretrained.convert_legacy_sae(folder, 1.0)
    with torch.no_grad():
        assert not torch.allclose(unscaled.decode(unscaled.encode(x)), x_hat_ref, atol=1e-2), \
            "without the b_dec fix the reconstruction is off by b_dec (1 - 1/s)"


def reference_norms(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "sae_weights.safetensors"))["W_dec"].norm(dim=-1)


def test_load_sae_converts_an_older_folder_and_checks_hook_and_width(tmp_path):
    folder, reference = legacy_folder(tmp_path)
    sae = load_sae(folder, hook_name="blocks.13.hook_resid_pre", norm_scaling_factor=S)
    x = torch.randn(4, D_IN)
    with torch.no_grad():
        # measured: max 1.9e-06 over 5 settings (bound 0.0001, 52x; scripts/tolerance_margins.py)
        assert_within("sae.decode(sae.encode(x))", max_abs(sae.decode(sae.encode(x)), reference(x)[1]), 1e-4)
    with pytest.raises(SAEMismatchError, match="blocks.13.hook_resid_pre"):
        load_sae(folder, hook_name="blocks.12.hook_resid_pre", norm_scaling_factor=S)
    with pytest.raises(pretrained.LegacySAEError, match="pass its norm_scaling_factor"):
        load_sae(folder)


def test_bad_legacy_folders_fail_in_one_line(tmp_path):
    folder, _ = legacy_folder(tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 99}))
    with pytest.raises(pretrained.LegacySAEError, match="do not match cfg.json's d_in=16, d_sae=99"):
        pretrained.convert_legacy_sae(folder, S)
    (folder / "cfg.json").write_text(json.dumps({**cfg, "activation_fn_str": "topk"}))
    with pytest.raises(pretrained.LegacySAEError, match="only ReLU"):
        pretrained.convert_legacy_sae(folder, S)
    with pytest.raises(KeyError, match="Kissane et al. released"):
        pretrained.fetch("webtext", tmp_path / "x")


def test_install_saves_a_sae_lens_6_folder_that_notebooks_read(tmp_path, monkeypatch):
    """The paper preset's path: the artifact (already downloaded here) becomes runs/<preset>/saes/<name>/."""
    folder, reference = legacy_folder(tmp_path)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    folder.rename(downloads / "chat")
    saved = pretrained.install("chat", tmp_path / "runs", downloads)
    assert saved == tmp_path / "runs" / "saes" / "chat" and not pretrained.is_legacy_folder(saved)
    record = json.loads((saved / "training.json").read_text())
    assert record["pretrained"] == "ckkissane/qwen-500M-chat-lmsys-1m-anthropic/" \
                                   "sae_qwen1.5-0.5b-chat_blocks.13.hook_resid_pre_32768:v11"
    sae = load_sae(saved, hook_name="blocks.13.hook_resid_pre")
    x = torch.randn(4, D_IN)
    with torch.no_grad():
        # measured: max 1.9e-06 over 5 settings (bound 0.0001, 52x; scripts/tolerance_margins.py)
        assert_within("sae.decode(sae.encode(x))", max_abs(sae.decode(sae.encode(x)), reference(x)[1]), 1e-4)


def test_conversion_reads_the_training_version_and_refuses_one_its_rule_does_not_fit(tmp_path):
    """Kissane et al.'s rule (divide b_dec by s) undoes a fold that sae_lens fixed in 4.0.10: a folder trained with
    4.0.10 or later, converted with a scaling factor, would have b_dec scaled twice."""
    folder, reference = legacy_folder(tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    for later in ("4.0.10", "4.1.0", "5.2.1"):
        (folder / "cfg.json").write_text(json.dumps({**cfg, "sae_lens_training_version": later}))
        with pytest.raises(pretrained.LegacySAEError, match=f"sae_lens {later}, which already folds"):
            pretrained.convert_legacy_sae(folder, S)
    for earlier in ("3.5.0", "4.0.9"):
        (folder / "cfg.json").write_text(json.dumps({**cfg, "sae_lens_training_version": earlier}))
        sae = pretrained.convert_legacy_sae(folder, S)
        x = torch.randn(4, D_IN)
        with torch.no_grad():
            # measured: max 1.9e-06 over 5 settings (bound 0.0001, 52x; scripts/tolerance_margins.py)
            assert_within("converted at an earlier version", max_abs(sae.decode(sae.encode(x)), reference(x)[1]), 1e-4)


def test_converted_and_trained_saes_name_the_model_alike_so_the_grid_has_two_rows(tmp_path):
    """The paper preset's dataset x model grid over Kissane et al.'s converted SAEs (cfg.json spells the model
    TransformerLens' way) beside SAEs notebook 02 trained (hub names): one row per model, not one per spelling."""
    from types import SimpleNamespace

    from helpers.decomposition import model_by_data

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for name, tl_name in (("chat", "qwen1.5-0.5b-chat"), ("base_chat", "qwen1.5-0.5b")):
        (tmp_path / name).mkdir()
        folder, _ = legacy_folder(tmp_path / name)
        cfg = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").write_text(json.dumps({**cfg, "model_name": tl_name}))
        folder.rename(downloads / name)
        pretrained.install(name, tmp_path / "runs", downloads)
    saes = {n: load_sae(tmp_path / "runs" / "saes" / n) for n in ("chat", "base_chat")}
    assert saes["chat"].cfg.metadata.model_name == "Qwen/Qwen1.5-0.5B-Chat"
    trained = {"webtext_chat": "Qwen/Qwen1.5-0.5B-Chat", "base_webtext_chat": "Qwen/Qwen1.5-0.5B"}
    for n, model in trained.items():
        saes[n] = SimpleNamespace(cfg=SimpleNamespace(metadata=SimpleNamespace(model_name=model)))
    grid = model_by_data(saes, {"chat": 0.849, "base_chat": 0.735, "webtext_chat": 0.596, "base_webtext_chat": 0.5})
    assert grid == {"qwen1.5-0.5b-chat": {"chat": 0.849, "webtext_chat": 0.596},
                    "qwen1.5-0.5b": {"chat": 0.735, "webtext_chat": 0.5}}
