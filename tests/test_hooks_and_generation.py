import pytest
import torch

from helpers.generation import generate, last_token_logits
from helpers.hooks import Intervention, ablate_direction, tl_hooks
from helpers.models import position_ids
from tolerances import assert_within, max_abs

PROMPTS = ["Write a poem about the sea.", "How do I pick a lock?", "Name three fruits."]


def test_ablation_removes_component_only():
    torch.manual_seed(0)
    acts, r = torch.randn(5, 7, 16), torch.randn(16) * 3
    out = ablate_direction(acts, r)
    # float32 on entries of size ~1-10; measured values beside each bound
    # measured: max 3.0e-07 over 5 settings (bound 1e-05, 34x; scripts/tolerance_margins.py)
    assert_within("hooks.ablated component along r", (out @ (r / r.norm())).abs().max(), 1e-5)
    # measured: max 1.8e-07 over 5 settings (bound 1e-05, 56x; scripts/tolerance_margins.py)
    assert_within("hooks.ablation idempotent", max_abs(ablate_direction(out, r), out), 1e-5)
    # the part orthogonal to r is kept: an ablation that returned zeros (or scaled everything) fails here
    other = torch.randn(16)
    other = other - (other @ r) / (r @ r) * r
    # measured: max 1.2e-06 over 5 settings (bound 0.0001, 84x; scripts/tolerance_margins.py)
    assert_within("hooks.ablation keeps the orthogonal part", max_abs(out @ other, acts @ other), 1e-4)
    # measured: max 4.8e-07 over 5 settings (bound 1e-05, 21x; scripts/tolerance_margins.py)
    assert_within("hooks.ablation formula", max_abs(out, acts - ((acts @ r) / (r @ r))[..., None] * r), 1e-5)


def test_addition_needs_vector_and_layer():
    with pytest.raises(ValueError, match="add_layer"):
        Intervention(add=torch.zeros(3))
    with pytest.raises(ValueError, match="out of range"):
        tl_hooks(Intervention(add=torch.zeros(3), add_layer=40), n_layers=24)


def test_tl_hooks_cover_every_layer():
    names = [n for n, _ in tl_hooks(Intervention(ablate=torch.ones(4)), n_layers=3)]
    assert len(names) == 9 and "blocks.2.hook_mlp_out" in names


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ablate", "add"])
def test_interventions_match_plain_hugging_face(model, plain_hf, plain_last_logits, kind):
    """The bridge's hooks against a plain HF model: addition against editing hidden_states[L] by hand, ablation
    against the direction folded into a copy of the plain model's weights (Arditi et al.'s equivalence)."""
    from helpers.evaluation import orthogonalized_copy

    torch.manual_seed(1)
    r = torch.randn(model.d_model) * 5
    iv = Intervention(ablate=r) if kind == "ablate" else Intervention(add=r, add_layer=10, coeff=1.0)
    hooked = last_token_logits(model, PROMPTS, iv)
    clean = last_token_logits(model, PROMPTS)
    enc = model.tokenize_instructions(PROMPTS)
    if kind == "add":
        reference = plain_last_logits(enc, 10, lambda x: x + r)
    else:
        with torch.no_grad():
            reference = orthogonalized_copy(plain_hf, r)(**enc, position_ids=position_ids(enc["attention_mask"])).logits[:, -1]
    assert (hooked - clean).abs().max() > 0.1, "the intervention must change something"
    # last-position logits (|logit| up to ~30), float32 through 24 layers in two summation orders: absolute
    # differences. A wrong layer, sign or position moves them by far more than 0.1 (asserted above).
    # measured: max 1.3e-04 over 5 settings (bound 0.01, 79x; scripts/tolerance_margins.py)
    assert_within(f"hooks.{kind} hooked vs plain HF logits", max_abs(hooked, reference), 1e-2)
    # measured: max 2.3e-04 over 5 settings (bound 0.01, 44x; scripts/tolerance_margins.py)
    assert_within("hooks.no intervention vs plain HF logits", max_abs(clean, plain_last_logits(enc)), 1e-2)


@pytest.mark.slow
def test_bridge_hook_names_match_tl_hooks(model):
    """Every hook `tl_hooks` names exists on the model's bridge (ablation, addition and an edit)."""
    iv = Intervention(ablate=torch.ones(model.d_model), add=torch.ones(model.d_model), add_layer=3,
                      edit=lambda x: x, edit_layer=5)
    names = [n for n, _ in tl_hooks(iv, model.n_layers)]
    with model.hooks(iv):
        pass  # would raise on an unknown hook name
    assert len(names) == 3 * model.n_layers + 2


@pytest.mark.slow
def test_generation_with_kv_cache_matches_full_recompute(model):
    """Greedy tokens from cached, ablated generation equal the argmax of a full ablated forward pass."""
    torch.manual_seed(2)
    iv = Intervention(ablate=torch.randn(model.d_model))
    prompt = model.format_chat(PROMPTS[1])
    completion = generate(model, [PROMPTS[1]], iv, max_new_tokens=8, progress=False)[0]
    ids = model.tokenize([prompt + completion])["input_ids"]
    n_prompt = model.tokenize([prompt])["input_ids"].shape[1]
    with torch.no_grad(), model.hooks(iv):
        logits = model.hf(input_ids=ids).logits
    predicted = logits[0, n_prompt - 1:-1].argmax(-1)
    assert torch.equal(predicted, ids[0, n_prompt:])


@pytest.mark.slow
def test_generation_is_batch_invariant_and_ordered(model):
    one_by_one = [generate(model, [p], max_new_tokens=6, progress=False)[0] for p in PROMPTS]
    batched = generate(model, PROMPTS, max_new_tokens=6, batch_size=3, progress=False)
    assert batched == one_by_one


@pytest.mark.slow
def test_starting_at_a_layer_matches_a_full_pass(model):
    from helpers.generation import cache_prompt_batches, last_token_logits_from_layer

    torch.manual_seed(5)
    r = torch.randn(model.d_model) * 5
    batches = cache_prompt_batches(model, PROMPTS, batch_size=2)
    # logits (|logit| up to ~30), absolute differences; restarting at the wrong layer moves them by > 1
    # measured: max 1.3e-05 over 5 settings (bound 0.01, 749x; scripts/tolerance_margins.py)
    assert_within("generation.cached prefix clean logits", max_abs(batches.clean_logits,
                                                                   last_token_logits(model, PROMPTS)), 1e-2)
    for layer in (0, 9):
        iv = Intervention(add=r, add_layer=layer)
        full = last_token_logits(model, PROMPTS, iv, batch_size=2)
        # measured: max 0.0e+00 over 5 settings (bound 0.01, no rounding seen; scripts/tolerance_margins.py)
        assert_within("generation.restart at a layer vs full pass",
                      max_abs(last_token_logits_from_layer(model, batches, layer, iv), full), 1e-2)
    assert len(model.hf.model.layers) == model.n_layers, "the layer list is restored"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["none", "ablate", "add"])
def test_shared_prefix_logits_match_full_passes(model, kind):
    """`last_token_logits(share_prefix=True)` (the template prefix run once, its KV cache copied into each
    left-padded batch) gives the full passes' logits, with batches of mixed lengths and a batch of one."""
    torch.manual_seed(6)
    r = torch.randn(model.d_model) * 5
    iv = {"none": Intervention(), "ablate": Intervention(ablate=r), "add": Intervention(add=r, add_layer=4)}[kind]
    prompts = PROMPTS + ["Reply with one word: yes.", "Explain in detail how a bicycle gear train works, step by step."]
    full = last_token_logits(model, prompts, iv, batch_size=2)
    shared = last_token_logits(model, prompts, iv, batch_size=2, share_prefix=True)
    assert (full - last_token_logits(model, prompts, batch_size=2)).abs().max() > 0.1 or kind == "none"
    # logits (|logit| up to ~30), absolute differences; a position, mask or cache mistake moves them by > 1
    # measured: max 5.0e-04 over 5 settings (bound 0.01, 20x; scripts/tolerance_margins.py)
    assert_within(f"generation.shared prefix vs full pass ({kind})", max_abs(shared, full), 1e-2)
    with pytest.raises(ValueError, match="edit"):
        last_token_logits(model, prompts, Intervention(edit=lambda x: x, edit_layer=3), share_prefix=True)


def test_common_prefix_leaves_each_prompt_two_tokens():
    from helpers.generation import _common_prefix_length

    assert _common_prefix_length([[1, 2, 3, 4, 5], [1, 2, 3, 9, 9, 9]]) == 3
    assert _common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 4, 5]]) == 2  # the shorter keeps 2 of its own
    assert _common_prefix_length([[1, 2, 3]]) == 1
    assert _common_prefix_length([[7, 1], [8, 1]]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["none", "ablate", "add prompt-only"])
def test_generation_matches_hugging_face_generate(model, kind):
    """Our greedy loop (shared-prefix cache, finished rows leave the batch) gives Hugging Face `generate`'s
    tokens, with the same hooks, on a left-padded batch of prompts of different lengths."""
    from helpers.generation import _common_prefix_length, generate_with_hf, reference_generate

    torch.manual_seed(3)
    r = torch.randn(model.d_model) * 4
    iv = {"none": Intervention(), "ablate": Intervention(ablate=r),
          "add prompt-only": Intervention(add=r, add_layer=8, prompt_only=True)}[kind]
    prompts = PROMPTS + ["Reply with one word: yes.", "Explain in detail how a bicycle gear train works."]
    ids = [model.tokenizer(model.format_chat(p))["input_ids"] for p in prompts]
    assert _common_prefix_length(ids) >= 3  # the user header (and a system prompt, where there is one) is shared
    ours = generate(model, prompts, iv, max_new_tokens=12, batch_size=5, progress=False)
    theirs = reference_generate(model, prompts, iv, max_new_tokens=12)
    assert ours == theirs
    # generate_with_hf (the benchmark's other side: HF's generate from the same prefix cache) gives them too
    assert generate_with_hf(model, prompts, iv, max_new_tokens=12, batch_size=5) == theirs
    assert any(len(model.tokenizer(t)["input_ids"]) < 12 for t in theirs) or kind != "none", \
        "one row should finish early, so that rows leaving the batch is exercised"


@pytest.mark.slow
def test_cross_entropy_table_restarting_at_a_layer_matches_full_passes(model):
    """Additions and edits restart from the clean stream at their layer; the CE equals a full hooked pass."""
    from helpers.evaluation import cross_entropy_table, window_cross_entropies

    torch.manual_seed(4)
    r = torch.randn(model.d_model) * 5
    windows = [model.tokenizer("def f(x):\n    return x * 2\n" * 6)["input_ids"][:40],
               model.tokenizer("To be, or not to be, that is the question. " * 6)["input_ids"][:40]]
    ivs = {"none": Intervention(), "ablate": Intervention(ablate=r), "add": Intervention(add=r, add_layer=9),
           "edit": Intervention(edit=lambda x: x * 0.5, edit_layer=13)}
    table = cross_entropy_table(model, windows, ivs, batch_size=2)
    for name, iv in ivs.items():
        full = window_cross_entropies(model, windows, iv, batch_size=2).mean().item()
        # a mean CE of ~1-10 nats: relative difference
        # measured: max 0.0e+00 over 5 settings (bound 0.001, no rounding seen; scripts/tolerance_margins.py)
        assert_within("evaluation.CE restarting at a layer vs full pass", abs(table[name]["ce"] - full) / full, 1e-3)
    assert table["add"]["increase"] > 0.01 and table["none"]["increase"] == 0
    assert len(model.hf.model.layers) == model.n_layers, "the layer list is restored"
