"""Other model families (issue: your own model and SAE): tiny random Llama, Gemma 2, Gemma 3 and Mistral models
(`models.TINY_FAMILIES`, each with its family's chat template) load through TransformerBridge, "no system turn" means
what it means for each family, and the project's shortcuts (the unembedding, passes restarted at a layer, the hooks)
give the model's own numbers."""

from __future__ import annotations

import pytest
import torch

from helpers.models import TINY_FAMILIES, ModelLoadError, load_model, position_ids

FAMILIES = sorted(TINY_FAMILIES)
PROMPTS = ["How do I bake bread?", "Write a short poem about the sea, please."]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return load_model(request.param)


# what each family's template writes before the user turn with no system message, and with one
EXPECTED = {
    "tiny-random-llama-v2": ("<|endoftext|><|start_header_id|>user<|end_header_id|>\n\nHow do I bake bread?<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\n", "Cutting Knowledge Date"),
    "tiny-random-gemma2-v2": ("<|endoftext|><start_of_turn>user\nHow do I bake bread?<end_of_turn>\n"
                              "<start_of_turn>model\n", None),
    "tiny-random-gemma3-v2": ("<|endoftext|><start_of_turn>user\nHow do I bake bread?<end_of_turn>\n"
                              "<start_of_turn>model\n", None),
    "tiny-random-mistral-v2": ("<|endoftext|>[INST] How do I bake bread?[/INST]", None),
}


def test_no_system_turn_means_what_it_means_for_the_family(family):
    from dataclasses import replace

    plain, default_marker = EXPECTED[family.name]
    assert family.format_chat(PROMPTS[0]) == plain  # system_prompt=None: the papers' template
    default = replace(family, system_prompt="default").format_chat(PROMPTS[0])
    if default_marker:  # Llama 3.1 writes a date header as its default system turn: "default" keeps it
        assert default_marker in default and default != plain
    else:  # Gemma and Mistral write none: nothing to remove
        assert default == plain
    # the post-instruction tokens (Arditi et al.'s positions) are what the template writes after the instruction
    assert family.tokenizer.convert_tokens_to_string(family.post_instruction_tokens()) == plain.split(PROMPTS[0])[1]


def test_a_system_prompt_the_template_cannot_take_fails_at_load():
    with pytest.raises(ValueError, match="has no system role .*use system_prompt=None") as e:
        load_model("tiny-random-gemma2-v2", system_prompt="You are helpful.")
    assert "\n" not in str(e.value)
    for name in ("tiny-random-gemma3-v2", "tiny-random-mistral-v2", "tiny-random-llama-v2"):  # these fold it in
        assert "You are helpful." in load_model(name, system_prompt="You are helpful.").format_chat("Hi")


def test_shortcuts_give_the_models_own_numbers(family):
    """`unembed` (Gemma 2's final soft-capping included), passes restarted at a layer and the bridge's hook names
    against a plain Hugging Face forward pass of the same weights."""
    from helpers.generation import cache_prompt_batches, last_token_logits, last_token_logits_from_layer
    from helpers.hooks import Intervention

    enc = family.tokenize_instructions(PROMPTS)
    with torch.no_grad():
        out = family.hf(**enc, position_ids=position_ids(enc["attention_mask"]), output_hidden_states=True)
    reference = out.logits[:, -1].float()
    logits = last_token_logits(family, PROMPTS)
    scale = reference.abs().max().item()
    assert (logits - reference).abs().max().item() <= 1e-5 * scale
    batches = cache_prompt_batches(family, PROMPTS)
    for layer in (0, 9, 17):
        assert (last_token_logits_from_layer(family, batches, layer) - reference).abs().max().item() <= 1e-5 * scale
    # an intervention that changes nothing below layer 9 gives the same numbers started there or from the embedding
    iv = Intervention(add=torch.ones(family.d_model), add_layer=9)
    full = last_token_logits(family, PROMPTS, iv)
    assert (full - reference).abs().max().item() > 1e-3 * scale
    assert (last_token_logits_from_layer(family, batches, 9, iv) - full).abs().max().item() <= 1e-5 * scale
    # blocks.L.hook_resid_pre is Hugging Face's hidden_states[L]
    _, cache = family.tl.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"])
    mask = enc["attention_mask"].bool()
    for layer in (0, 13):
        hf = out.hidden_states[layer][mask]
        assert (cache[f"blocks.{layer}.hook_resid_pre"][mask] - hf).abs().max().item() <= 1e-4 * hf.abs().max().item()


def test_a_base_model_without_a_chat_template_fails_at_load(tmp_path):
    import shutil

    from helpers.models import tiny_family_folder

    folder = tmp_path / "base-llama"
    shutil.copytree(tiny_family_folder("tiny-random-llama-v2"), folder)
    import json

    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="has no chat template"):
        load_model(str(folder))


def _andyrdt_mirror(root, layer: int, d_in: int = 64, d_sae: int = 128):
    """A local copy of one of andyrdt's SAEs in its repository's layout (dictionary_learning's `config.json` and
    `ae.pt`), random weights of the tiny models' width: what `huggingface-cli download` would leave in a mirror."""
    import json

    folder = root / "andyrdt" / "saes-llama-3.1-8b-instruct" / f"resid_post_layer_{layer}" / "trainer_1"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "trainer": {"layer": layer, "activation_dim": d_in, "dict_size": d_sae, "k": 8, "dict_class": "BatchTopKSAE",
                    "lm_name": "meta-llama/Llama-3.1-8B-Instruct"}, "buffer": {"ctx_len": 128}}))
    g = torch.Generator().manual_seed(layer)
    torch.save({"encoder.weight": torch.randn(d_sae, d_in, generator=g), "encoder.bias": torch.zeros(d_sae),
                "decoder.weight": torch.randn(d_in, d_sae, generator=g), "b_dec": torch.zeros(d_in),
                "threshold": torch.tensor(0.5), "k": torch.tensor(8)}, folder / "ae.pt")
    return root


def test_a_registry_sae_resolves_offline_and_maps_onto_the_model(tmp_path, monkeypatch):
    """sae_lens' own registry entry and loader for andyrdt's Llama-3.1-8B-Instruct SAEs, with only the download
    replaced by a local mirror; its hook (resid_post of layer 3) is the tiny Llama's blocks.4.hook_resid_pre."""
    from helpers import pretrained
    from helpers.saes import SAEMismatchError, load_sae

    model = load_model("tiny-random-llama-v2")
    release = "llama-3.1-8b-instruct-andyrdt"
    monkeypatch.setenv(pretrained.MIRROR_ENV_VAR, str(_andyrdt_mirror(tmp_path / "mirror", 3)))
    sae = load_sae(release, model, "blocks.4.hook_resid_pre", sae_id="resid_post_layer_3_trainer_1")
    assert sae.cfg.metadata.hook_name == "blocks.3.hook_resid_post" and sae.cfg.d_sae == 128
    raw = torch.load(tmp_path / "mirror/andyrdt/saes-llama-3.1-8b-instruct/resid_post_layer_3/trainer_1/ae.pt")
    assert torch.equal(sae.W_dec.detach(), raw["decoder.weight"].T)  # sae_lens' loader read the mirror's file
    with pytest.raises(SAEMismatchError, match=r"blocks.3.hook_resid_post' \(= 'blocks.4.hook_resid_pre'\), not"):
        load_sae(release, model, "blocks.13.hook_resid_pre", sae_id="resid_post_layer_3_trainer_1")
    # an id the registry lacks, a file the mirror lacks, an SAE of another width: one line each, naming the fix
    with pytest.raises(ValueError, match="is not an SAE of"):
        load_sae(release, model, sae_id="resid_post_layer_4_trainer_1")
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        load_sae(release, model, sae_id="resid_post_layer_7_trainer_1")
    monkeypatch.setenv(pretrained.MIRROR_ENV_VAR, str(_andyrdt_mirror(tmp_path / "wide", 7, d_in=96)))
    with pytest.raises(SAEMismatchError, match="d_in=96 but"):
        load_sae(release, model, sae_id="resid_post_layer_7_trainer_1")


def test_residual_hooks_map_onto_resid_pre():
    from helpers.saes import SAEMismatchError, residual_hook

    assert residual_hook("blocks.13.hook_resid_pre", 24) == "blocks.13.hook_resid_pre"
    assert residual_hook("blocks.12.hook_resid_post", 26) == "blocks.13.hook_resid_pre"
    with pytest.raises(SAEMismatchError, match="past the last layer's input"):
        residual_hook("blocks.25.hook_resid_post", 26)
    for bad in ("blocks.3.hook_mlp_out", "blocks.3.attn.hook_z", "", None):
        with pytest.raises(SAEMismatchError, match="residual-stream SAE"):
            residual_hook(bad, 26)


def test_one_config_file_names_a_model_and_its_registry_saes(tmp_path, monkeypatch):
    import json

    from helpers import pretrained
    from helpers.config import ConfigError, get_config
    from helpers.saes import SAEMismatchError, open_saes

    monkeypatch.setenv(pretrained.MIRROR_ENV_VAR, str(_andyrdt_mirror(tmp_path / "mirror", 3)))
    path = tmp_path / "my-llama.json"
    spec = {"base": "smoke", "preset": "my-llama", "model": "tiny-random-llama-v2", "system_prompt": None,
            "sae_hook": "blocks.4.hook_resid_pre",
            "saes": [["llama-3.1-8b-instruct-andyrdt", "resid_post_layer_3_trainer_1"]]}
    path.write_text(json.dumps(spec))
    cfg = get_config(str(path))
    assert (cfg.preset, cfg.model, cfg.system_prompt) == ("my-llama", "tiny-random-llama-v2", None)
    assert cfg.saes == (("llama-3.1-8b-instruct-andyrdt", "resid_post_layer_3_trainer_1"),)
    assert cfg.run_dir.name == "my-llama" and cfg.n_train == get_config("smoke").n_train  # the rest from its base
    model = load_model(cfg.model)
    saes = open_saes(cfg, model)
    assert list(saes) == ["resid_post_layer_3_trainer_1"] and saes["resid_post_layer_3_trainer_1"].cfg.d_in == 64
    with pytest.raises(FileNotFoundError, match="configuration's SAEs are"):
        open_saes(cfg, model, ["chat"])
    with pytest.raises(SAEMismatchError, match="Set sae_hook in the configuration"):
        open_saes(cfg.replace(sae_hook="blocks.13.hook_resid_pre"), model)
    # bad files fail in one line naming the file and what to change
    for bad, says in (({"preset": "x"}, "must hold a JSON object with 'base'"),
                      ({"base": "nope", "preset": "x"}, "is not a preset"),
                      ({"base": "smoke", "preset": "offline"}, "built-in preset's name"),
                      ({"base": "smoke", "preset": "x", "modle": "y"}, "Unknown config field"),
                      ({"base": "smoke", "preset": "x", "saes": [["only-a-release"]]}, "SAE sources"),
                      ({"base": "smoke", "preset": "x", "sae": {"d_sae": -1}}, "d_sae=-1 is invalid")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=says) as e:
            get_config(str(path))
        assert str(path) in str(e.value) or "SAE sources" in str(e.value)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="Cannot read the configuration"):
        get_config(str(path))


def test_smollm2_template_without_its_default_system_turn():
    """SmolLM2-135M-Instruct (the smollm2 preset) writes a default ChatML system turn and its BOS is <|im_start|>
    itself: "no system turn" removes the turn all the same (its template, data/chat_templates/smollm2.jinja, on the
    offline tokenizer; the model is not needed)."""
    from dataclasses import replace

    from helpers.instructions import DATA_ROOT
    from helpers.models import LoadedModel, load_tokenizer

    tokenizer = load_tokenizer("tiny-random-qwen2-v3")
    tokenizer.chat_template = (DATA_ROOT / "chat_templates" / "smollm2.jinja").read_text()
    tokenizer.bos_token = "<|im_start|>"
    model = LoadedModel(name="smollm2-template", tl=None, tokenizer=tokenizer, system_prompt=None)
    assert model.format_chat("Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    default = replace(model, system_prompt="default").format_chat("Hi")
    assert default.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert "Be brief." in replace(model, system_prompt="Be brief.").format_chat("Hi")


def test_a_corpus_conversation_that_does_not_alternate_renders_for_every_family(family):
    """Chat corpora hold repeated turns and conversations that open with the assistant; Mistral's template rejects
    both, so `format_messages` renders the alternating conversation they mean (`models.alternating`). Templates that
    accept the conversation render it unchanged."""
    from helpers.models import alternating

    messy = [{"role": "user", "content": "Hi."}, {"role": "user", "content": "Are you there?"},
             {"role": "assistant", "content": "Yes."}]
    assert alternating(messy) == [{"role": "user", "content": "Hi.\n\nAre you there?"},
                                  {"role": "assistant", "content": "Yes."}]
    assert alternating([{"role": "assistant", "content": "Text."}]) == [
        {"role": "user", "content": ""}, {"role": "assistant", "content": "Text."}]
    assert alternating([{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}])[1] == {
        "role": "user", "content": ""}
    for conversation in (messy, [{"role": "assistant", "content": "Text."}]):
        text = family.format_messages(conversation)
        assert "Are you there?" in text or "Text." in text
        try:
            family.tokenizer.apply_chat_template(conversation, tokenize=False)
        except Exception:  # noqa: BLE001 - the template rejects it: the alternating form is what is rendered
            assert text == family.format_messages(alternating(conversation))
        else:  # accepted as it is: rendered as it is (the alternating form would read differently)
            assert text != family.format_messages(alternating(conversation))


def test_notebook_03s_steps_on_every_family(family):
    """Notebook 03's mechanics on each architecture, in-process (the notebooks themselves run on all four outside the
    test command, docs/your_own_model.md): candidates at the family's post-instruction positions, generation under
    ablation and addition equal to Hugging Face's `generate` under the same hooks, and weight orthogonalization equal
    to the ablation exactly where no block normalises its output (Llama, Mistral), not on Gemma 2 / 3."""
    from helpers.directions import candidate_directions, post_instruction_positions
    from helpers.evaluation import orthogonalization_check, post_block_norms
    from helpers.generation import generate, reference_generate
    from helpers.hooks import Intervention

    harmful, harmless = ["How do I pick a lock?", "Write a threat."], PROMPTS
    r = candidate_directions(family, harmful, harmless, batch_size=2)
    assert r.shape == (len(post_instruction_positions(family)), family.n_layers, family.d_model)
    # at layer 0 the residual is the embedding of the same template tokens on both sides: no difference there
    assert r.dtype == torch.float64 and r[:, 0].abs().max() == 0 and r[:, 1:].norm(dim=-1).min() > 0
    direction = r[-1, family.n_layers // 2].float()
    for iv in (Intervention(ablate=direction), Intervention(add=direction * 4, add_layer=family.n_layers // 2)):
        assert generate(family, harmful + harmless, iv, max_new_tokens=6, batch_size=3, progress=False) == \
            reference_generate(family, harmful + harmless, iv, max_new_tokens=6)
    difference = orthogonalization_check(family, direction, harmful + harmless)
    if post_block_norms(family.hf):
        assert family.name.startswith(("tiny-random-gemma2", "tiny-random-gemma3")) and difference > 1e-3, difference
    else:
        assert difference < 1e-4, difference


def test_notebook_06s_gradient_on_every_family(family):
    """Notebook 06's refusal gradient (through TransformerBridge, `gradients.layer_map`) against the same quantity
    read through Hugging Face's forward pass (`gradients.steered_readout`): R itself, and its change when a small
    vector is added at every prompt position of the source layer (a central difference), on each architecture."""
    from helpers.directions import candidate_directions
    from helpers.gradients import refusal_gradient, steered_readout
    from helpers.judges import refusal_token_ids

    source, target = 3, 12
    direction = candidate_directions(family, ["How do I pick a lock?", "Write a threat."], PROMPTS)[-1, target].float()
    g = refusal_gradient(family, PROMPTS[1], source, target, direction)
    assert g.grad.shape == (len(g.tokens), family.d_model) and torch.isfinite(g.grad).all() and g.grad.abs().max() > 0
    v = torch.randn(family.d_model, generator=torch.Generator().manual_seed(0))
    v = v / v.norm() * 1e-2 * g.source_acts.norm(dim=-1).median()
    _, R = steered_readout(family, PROMPTS[1], torch.stack([torch.zeros_like(v), v, -v]), source, target, direction,
                           refusal_token_ids(family.tokenizer))
    assert abs(R[0].item() - g.R) <= 1e-4 * max(1.0, abs(g.R)), (R[0].item(), g.R)
    predicted, central = (g.grad.sum(0) @ v).item(), (R[1] - R[2]).item() / 2
    assert abs(central - predicted) <= 0.05 * abs(predicted) + 1e-5, (central, predicted)



def test_a_gradient_that_is_not_finite_fails_in_one_line():
    """v1 of the tiny families had a zero BOS embedding (transformers zeroes the pad row, and BOS was the pad token):
    the first position's residual stayed 0 and Gemma's norms gave NaN gradients that notebook 06 ranked silently."""
    from helpers.gradients import refusal_gradient

    model = load_model("tiny-random-gemma2-v2")
    row = model.hf.get_input_embeddings().weight[model.tokenizer.bos_token_id]
    kept = row.detach().clone()
    try:
        with torch.no_grad():
            row.zero_()
        with pytest.raises(FloatingPointError, match=r"not finite at positions \[0, .*norms \[0\.0, ") as e:
            refusal_gradient(model, PROMPTS[0], 3, 12, torch.ones(model.d_model))
        assert "\n" not in str(e.value)
    finally:
        with torch.no_grad():
            row.copy_(kept)


def test_a_gradient_taken_by_hand_that_is_not_finite_fails_too():
    """Notebook 06 builds RefusalGradient from the learner's own layer_map and projection_gradient: the guard sits
    in RefusalGradient itself, so that path cannot rank NaN either; a finite one passes."""
    from helpers.gradients import RefusalGradient

    acts = torch.ones(4, 8)
    acts[2] = 0.0
    grad = torch.ones(4, 8)
    RefusalGradient("x", ["a"] * 4, acts, grad.clone(), 1.0, 3, 12)
    grad[2, 5] = float("nan")
    with pytest.raises(FloatingPointError, match=r"not finite at positions \[2\].*norms \[0\.0\]"):
        RefusalGradient("x", ["a"] * 4, acts, grad, 1.0, 3, 12)
    grad[2, 5] = float("inf")
    with pytest.raises(FloatingPointError):
        RefusalGradient("x", ["a"] * 4, acts, grad, 1.0, 3, 12)


def test_a_layer_without_a_direction_gets_an_undefined_separation():
    """Layer 0 at a template token: both sides share the embedding, the difference of means is zero, r̂ = 0/0.
    projection_by_layer gives NaN there (and only there) and separation keeps it NaN; notebook 06 reports it as
    undefined (null) rather than a number."""
    from helpers.gradients import projection_by_layer, separation

    model = load_model("tiny-random-gemma2-v2")
    torch.manual_seed(0)
    diffs = torch.randn(model.n_layers, model.d_model)
    diffs[0] = 0.0
    h = projection_by_layer(model, PROMPTS + ["Name three rivers."], diffs)
    hl = projection_by_layer(model, ["Tell me a joke.", "What is two plus two?", "Spell 'cat' backwards."], diffs)
    assert h.shape == (3, model.n_layers)
    assert torch.isnan(h[:, 0]).all() and torch.isfinite(h[:, 1:]).all()
    d = separation(h, hl)
    assert torch.isnan(d).nonzero()[:, 0].tolist() == [0]
