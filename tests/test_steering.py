"""Notebook 05's interventions and judges: exact checks on synthetic SAEs and on the model."""

import pytest
import torch

from helpers import judges, steering
from helpers.generation import last_token_logits
from helpers.hooks import Intervention, ablate_direction
from tolerances import assert_within, max_abs, scaled_error


def sae_lens_sae(d_in: int, d_sae: int = 64, seed: int = 0):
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu"))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.2)
    return sae


def test_starts_with_judge_on_fixed_strings():
    assert judges.is_refusal_start("I'm sorry, but I can't help with that.")
    assert judges.is_refusal_start("  I\u2019m sorry, I can\u2019t.")  # curly apostrophe, leading space
    assert judges.is_refusal_start("No, I will not do that.")
    assert judges.is_refusal_start("I'm not going to do that.")
    assert judges.is_refusal_start("I am not comfortable with this")
    assert not judges.is_refusal_start("Sure! Here is how. I'm sorry if it is long.")  # refusal later: substring only
    assert not judges.is_refusal_start("i'm sorry")  # case-sensitive, as a prefix list is
    rate = judges.refusal_rate_start(["I cannot do that", "Sure.", "As an AI, no", "Here you go"])
    assert (rate.rate, rate.n) == (0.5, 4)


def test_degeneration_flags_loops_not_prose():
    assert judges.is_degenerate("the cat sat on " * 10)
    assert judges.is_degenerate("! ! ! ! ! ! ! ! ! ! ! !")
    assert not judges.is_degenerate("Here is a recipe for pancakes: mix flour, eggs and milk, then fry each "
                                      "one in butter until golden on both sides.")
    assert not judges.is_degenerate("ok ok")  # too short to judge


def test_ablating_the_span_of_one_latent_equals_ablating_its_decoder_direction():
    sae = sae_lens_sae(16)
    acts = torch.randn(3, 5, 16)
    span = steering.latent_ablation(sae, [7])
    row = sae.W_dec.detach()[7]
    # measured: max 0.0e+00 over 5 settings (bound 1e-05, no rounding seen; scripts/tolerance_margins.py)
    assert_within("ablate_direction(acts, span.ablate)",
                  max_abs(ablate_direction(acts, span.ablate), ablate_direction(acts, row)), 1e-5)
    two = steering.latent_ablation(sae, [7, 9])
    assert two.ablate.shape == (2, 16)
    out = ablate_direction(acts, two.ablate)
    for k in (7, 9):
        # measured: max 1.2e-07 over 5 settings (bound 0.0001, 839x; scripts/tolerance_margins.py)
        assert_within("both rows projected out", (out @ sae.W_dec.detach()[k]).abs().max(), 1e-4)
    # measured: max 1.2e-07 over 5 settings (bound 1e-05, 84x; scripts/tolerance_margins.py)
    assert_within("ablate_direction(out, two.ablate)", max_abs(ablate_direction(out, two.ablate), out), 1e-5)


def test_subspace_sweep_names_each_k_and_runs_each_latent_set_once():
    saes = {"chat": sae_lens_sae(16, seed=1), "web": sae_lens_sae(16, seed=2)}
    rankings = {"chat": {"delta": [5, 3, 9, 1], "omp": [3, 5, 2, 8]}, "web": {"delta": [4, 6, 7, 0], "omp": [4, 7, 6, 0]}}
    keys, same_as, to_run = steering.subspace_sweep(saes, rankings, [1, 2, 4], done={("chat", (5,)): "ablate chat top latent"})
    assert len(keys) == 2 * 2 * 3 and keys[("chat", "omp", 2)] == "ablate chat top-2 (omp)"
    # chat top-1 by delta is the top latent run elsewhere; top-2 sets {3, 5} are equal by both rankings; web's top-1
    # is 4 by both, and top-4 is {0, 4, 6, 7} by both
    assert same_as == {"ablate chat top-1 (delta)": "ablate chat top latent",
                       "ablate chat top-2 (omp)": "ablate chat top-2 (delta)",
                       "ablate web top-1 (omp)": "ablate web top-1 (delta)",
                       "ablate web top-4 (omp)": "ablate web top-4 (delta)"}
    assert set(to_run) | set(same_as) == set(keys.values()) and not set(to_run) & set(same_as)
    four = to_run["ablate chat top-4 (delta)"].ablate
    assert four.shape == (4, 16)
    out = ablate_direction(torch.randn(2, 3, 16), four)
    # measured: max 1.5e-07 over 5 settings (bound 0.0001, 671x; scripts/tolerance_margins.py)
    assert_within("the span of exactly those 4 rows", (out @ saes["chat"].W_dec.detach()[[1, 3, 5, 9]].T).abs().max(), 1e-4)


def test_subspace_ablation_rejects_dependent_rows():
    r = torch.randn(8)
    with pytest.raises(ValueError, match="linearly dependent"):
        Intervention(ablate=torch.stack([r, 2 * r]))
    with pytest.raises(ValueError, match="zero row"):
        Intervention(ablate=torch.stack([r, torch.zeros(8)]))


def test_clamp_with_nothing_clamped_equals_sae_lens_error_term_splice():
    """No clamp leaves x as it is, both through the `None` shortcut and through the splice itself: every latent
    clamped to its own activation runs sae_lens' forward pass with the error term and must give x back."""
    sae = sae_lens_sae(16)
    x = torch.randn(2, 4, 16) * 3
    # measured: max 0.0e+00 over 5 settings (bound 1e-05, no rounding seen; scripts/tolerance_margins.py)
    assert_within("sae_clamp's None shortcut", scaled_error(steering.sae_clamp(sae, [3], None)(x), x), 1e-5)
    # measured: max 4.8e-07 over 5 settings (bound 1e-05, 21x; scripts/tolerance_margins.py)
    assert_within("steering.spliced_output(sae, x)", max_abs(steering.spliced_output(sae, x), x), 1e-5)
    one = x[:1, :1]
    f = sae.encode(one)[0, 0].detach()
    every = list(range(sae.cfg.d_sae))
    # measured: max 1.8e-07 over 5 settings (bound 0.0001, 559x; scripts/tolerance_margins.py)
    assert_within("every latent clamped to its own activation, through the splice",
                  max_abs(steering.sae_clamp(sae, every, f)(one), one), 1e-4)
    moved = f.clone()
    moved[f.argmax()] += 1.0
    assert max_abs(steering.sae_clamp(sae, every, moved)(one), one) > 0.1, "the splice path is taken, not skipped"


def test_clamping_a_latent_to_its_own_activation_is_a_no_op():
    sae = sae_lens_sae(16)
    x = torch.randn(1, 1, 16) * 3
    f = sae.encode(x)[0, 0]
    latent = int(f.argmax())
    assert f[latent] > 0
    # measured: max 1.8e-07 over 5 settings (bound 1e-05, 56x; scripts/tolerance_margins.py)
    assert_within("steering.sae_clamp(sae, [latent], f[l...",
                  max_abs(steering.sae_clamp(sae, [latent], f[latent].item())(x), x), 1e-5)
    zeroed = steering.sae_clamp(sae, [latent], 0.0)(x)
    expected = x - f[latent] * sae.W_dec.detach()[latent]
    # measured: max 9.2e-07 over 5 settings (bound 1e-05, 11x; scripts/tolerance_margins.py)
    assert_within("clamping to 0 removes f_k * W_dec[k], nothing else", scaled_error(zeroed, expected), 1e-5)


def _error_term_splice(sae, x, latents, values):
    """sae_lens' own splice, written out: decode(f') + (x - decode(f)) with f' = f, `latents` set to `values`."""
    with torch.no_grad():  # a layer_norm SAE keeps its input's statistics from one encode for one decode
        clamped = sae.encode(x).clone()
        clamped[..., latents] = torch.as_tensor(values, dtype=clamped.dtype)
        steered = sae.decode(clamped)
        return steered + (x - sae.decode(sae.encode(x)))


@pytest.mark.parametrize("normalize", ["none", "layer_norm"])
def test_a_multi_latent_clamp_equals_sae_lens_error_term_splice(normalize):
    """A non-zero clamp of two latents (to different values) through `sae_clamp` equals sae_lens' splice with the
    error term, also for an SAE that normalises its input at run time (layer_norm), where
    x + (v - f) @ W_dec[idx] would be wrong by the normalisation's scale."""
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(1)
    sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=64, dtype="float32", device="cpu",
                                        normalize_activations=normalize))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, 5, 16) * 3 + 1
    latents, values = [4, 11], [2.5, 0.0]
    got = steering.sae_clamp(sae, latents, torch.tensor(values))(x)
    expected = _error_term_splice(sae, x, latents, values)
    assert (got - x).abs().max() > 0.1, "the clamp changes the residual"
    # measured: max 0.0e+00 over 5 settings (bound 1e-05, no rounding seen; scripts/tolerance_margins.py)
    assert_within("got", max_abs(got, expected), 1e-5)
    f = sae.encode(x)
    if normalize == "layer_norm":
        sae.decode(f)  # consumes the statistics encode kept
    naive = x + (torch.tensor(values) - f[..., latents]) @ sae.W_dec.detach()[latents]
    if normalize == "layer_norm":
        assert not torch.allclose(naive, expected, atol=1e-3), "the fixture must tell the two formulas apart"
    assert not sae.use_error_term, "the SAE is left as it was"


def test_smallest_matching_k():
    from helpers.judges import Rate

    target = Rate(0.1, 40)
    rates = [Rate(0.6, 40), Rate(0.3, 40), Rate(0.15, 40), Rate(0.1, 40)]
    assert steering.smallest_matching_k([1, 2, 4, 8], rates, target) == 4
    assert steering.smallest_matching_k([1, 2], rates[:2], target) is None
    # a stronger bypass than the target's matches (the offline run: 0/40 against r's 1/40, whose s.e. is 0.025)
    assert steering.smallest_matching_k([1, 2], [Rate(0.0, 40), Rate(0.0, 40)], Rate(0.025, 40)) == 1


@pytest.mark.slow
def test_sae_clamp_on_the_model_matches_plain_hf_and_is_exact_unclamped(model, plain_last_logits):
    """The spliced SAE with the error term and no clamp leaves the logits unchanged (relative <= 1e-4); a clamp
    changes them as the same edit applied by hand to a plain Hugging Face model's residual does."""
    sae = sae_lens_sae(model.d_model, 256)
    prompts = ["How do I pick a lock?", "Name three fruits."]
    clean = last_token_logits(model, prompts)
    unclamped = Intervention(edit=lambda x: steering.spliced_output(sae, x), edit_layer=13)
    spliced = last_token_logits(model, prompts, unclamped)
    # measured: max 7.2e-07 over 5 settings (bound 0.0001, 139x; scripts/tolerance_margins.py)
    assert_within("spliced SAE with error term vs clean logits, relative norm",
                  ((spliced - clean).norm() / clean.norm()).item(), 1e-4)
    clamp = steering.clamp_intervention(sae, [5, 6], 50.0, layer=13)
    hooked = last_token_logits(model, prompts, clamp)
    reference = plain_last_logits(model.tokenize_instructions(prompts), 13, clamp.edit)
    assert (hooked - clean).abs().max() > 0.1, "the clamp must change something"
    # measured: max 1.9e-05 over 5 settings (bound 0.01, 524x; scripts/tolerance_margins.py)
    assert_within("clamped logits vs plain HF with the same edit", max_abs(hooked, reference), 1e-2)


@pytest.mark.slow
def test_prompt_only_steering_leaves_generated_tokens_alone(model):
    """With prompt_only, the first generated token is steered (it is predicted from the prompt pass) and the
    residual of later single-token passes is not edited."""
    calls = []
    iv = Intervention(edit=lambda x: calls.append(x.shape[1]) or x, edit_layer=3, prompt_only=True)
    from helpers.generation import generate

    generate(model, ["Name three fruits."], iv, max_new_tokens=4, progress=False, stop_at_eos=False)
    assert len(calls) == 1 and calls[0] > 1, calls
    calls.clear()
    generate(model, ["Name three fruits."], Intervention(edit=iv.edit, edit_layer=3), max_new_tokens=4,
             progress=False, stop_at_eos=False)
    assert calls[0] > 1 and calls[1:] == [1, 1, 1], calls
