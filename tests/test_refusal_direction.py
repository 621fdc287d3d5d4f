import math
import os

import pytest
import torch

from helpers.directions import candidate_directions, mean_activations, post_instruction_positions
from helpers.evaluation import cross_entropy, last_token_cosines, orthogonalization_check
from helpers.hooks import Intervention
from helpers.instructions import instructions_only, load_instructions
from helpers.judges import refusal_token_ids
from helpers.selection import (CandidateScores, SelectionError, kl_last_token, max_selectable_layer, mean_and_se,
                               score_candidates, select_direction)
from tolerances import assert_within, max_abs, scaled_error


def make_scores(bypass, induce, kl):
    t = lambda rows: torch.tensor(rows, dtype=torch.float32)  # noqa: E731
    return CandidateScores(positions=[-2, -1], bypass=t(bypass), induce=t(induce), kl=t(kl),
                           baseline_harmful=1.0, baseline_harmless=-1.0)


def test_select_direction_applies_filters_and_picks_lowest_bypass():
    # 2 positions x 5 layers; the global minimum bypass (-9) fails each filter in turn.
    bypass = [[-9, -3, -2, -1, -9], [-9, -4, 0, -5, -9]]
    induce = [[-1, 1, 1, 1, 1], [1, 1, 1, -0.5, 1]]
    kl = [[0, 0.05, 0, 0, 0], [0.2, 0.01, 0, 0, 0]]
    chosen = select_direction(make_scores(bypass, induce, kl), n_layers=5)
    # layer 4 is >= 0.8 * 5, (0,0) has induce <= 0, (1,0) has KL >= 0.1, (1,3) has induce <= 0
    assert (chosen.pos_index, chosen.layer, chosen.position) == (1, 1, -1)
    assert chosen.bypass_score == -4


def test_select_direction_skips_unscored_and_reports_failure():
    nan = math.nan
    scores = make_scores([[nan, 1.0], [nan, nan]], [[1, -1], [1, 1]], [[0, 0], [0, 0]])
    with pytest.raises(SelectionError, match="No candidate passes.*pos -2 layer 1: bypass 1.00"):
        select_direction(scores, n_layers=10)
    fallback = select_direction(scores, n_layers=10, fallback=True)
    assert (fallback.layer, fallback.position, fallback.filters_passed) == (1, -2, False)


def test_judged_induce_filter_tries_candidates_in_bypass_order():
    """induce_filter="generation": candidates passing KL and the layer cut are checked in order of bypass; the
    first whose judged induce rate exceeds 0.5 wins even if its induce *metric* is negative."""
    bypass = [[-9, -3, -2, -1, -9], [-9, -4, 0, -5, -9]]
    induce = [[-1, -1, -1, -1, -1], [-1, -1, -1, -1, -1]]  # no candidate passes Arditi's metric filter
    kl = [[0, 0.05, 0, 0, 0], [0.2, 0.01, 0, 0, 0]]
    scores = make_scores(bypass, induce, kl)
    with pytest.raises(SelectionError, match="induce > 0.0"):
        select_direction(scores, n_layers=5)
    rates = {(0, 0): 0.4, (1, 3): 0.5, (1, 1): 0.9, (0, 1): 1.0}
    tried = []

    def check(p, layer):
        tried.append((p, layer))
        return rates.get((p, layer), 0.0)

    chosen = select_direction(scores, n_layers=5, induce_check=check)
    # order by bypass among KL < 0.1 and layer < 4: (0,0) -9, (1,3) -5, (1,1) -4, ...; (1,0) fails KL
    assert tried == [(0, 0), (1, 3), (1, 1)]
    assert (chosen.pos_index, chosen.layer) == (1, 1)
    assert [c["induce_rate"] for c in chosen.induce_checks] == [0.4, 0.5, 0.9]
    with pytest.raises(SelectionError, match=r"induce rate > 0.5 \(judged\).*pos -2 layer 0: 40%"):
        select_direction(scores, n_layers=5, induce_check=lambda p, layer: 0.4)
    assert select_direction(scores, n_layers=5, induce_check=lambda p, layer: 0.4, fallback=True).filters_passed is False


def test_layer_cut_off_matches_the_paper_code():
    assert max_selectable_layer(24) == 19 and max_selectable_layer(5) == 4
    # layer 19 of 24 passes every filter with the best bypass, but int(0.8 * 24) = 19 excludes it
    bypass = [[0.0] * 24, [0.0] * 24]
    bypass[0][19], bypass[1][18] = -5.0, -1.0
    ones = [[1.0] * 24, [1.0] * 24]
    zeros = [[0.0] * 24, [0.0] * 24]
    chosen = select_direction(make_scores(bypass, ones, zeros), n_layers=24)
    assert (chosen.layer, chosen.pos_index) == (18, 1)


def test_mean_and_se():
    mean, se = mean_and_se(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5
    # measured: max 0.0e+00 over 5 settings (bound 1e-06, no rounding seen; scripts/tolerance_margins.py)
    assert_within("se", scaled_error(se, 1.2909944 / 2), 1e-6)
    assert math.isnan(mean_and_se(torch.tensor([1.0]))[1])


def test_kl_is_zero_for_identical_and_positive_otherwise():
    a = torch.randn(3, 11)
    # measured: max 0.0e+00 over 5 settings (bound 1e-12, no rounding seen; scripts/tolerance_margins.py)
    assert_within("kl_last_token(a, a)", max_abs(kl_last_token(a, a), torch.zeros(3, dtype=torch.float64)), 1e-12)
    assert (kl_last_token(a, a + torch.randn(3, 11)) > 0).all()


def test_kl_by_hand_and_its_direction():
    """KL(clean || other): p = softmax([0, ln 3]) = [1/4, 3/4], q = [1/2, 1/2]:
    1/4 ln(1/2) + 3/4 ln(3/2) = 0.130812...; the other way round, 1/2 ln 2 + 1/2 ln(2/3) = 0.143841..."""
    p, q = torch.tensor([[0.0, math.log(3)]], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    # measured: max 1.1e-16 over 5 settings (bound 1e-12, 9007x; scripts/tolerance_margins.py)
    assert_within("kl_last_token(p, q).item()",
                  abs((kl_last_token(p, q).item()) - (0.25 * math.log(0.5) + 0.75 * math.log(1.5))), 1e-12)
    # measured: max 0.0e+00 over 5 settings (bound 1e-12, no rounding seen; scripts/tolerance_margins.py)
    assert_within("kl_last_token(q, p).item()",
                  abs((kl_last_token(q, p).item()) - (0.5 * math.log(2) + 0.5 * math.log(2 / 3))), 1e-12)


@pytest.fixture(scope="module")
def shared_prompts(instruction_dir):
    """Prompts from public-format files through the local-file option (as a user would pass them): the small
    fixture, and the public splits when present."""
    def load(name, file, n):
        return instructions_only(load_instructions(name, path=os.path.join(instruction_dir, file), n=n))

    return {"harmful": load("advbench", "harmful_train.json", 4), "harmless": load("alpaca", "harmless_train.json", 4)}


@pytest.mark.slow
def test_candidates_on_public_sets_match_transformer_lens(model, shared_prompts):
    positions = post_instruction_positions(model)
    assert positions == [-5, -4, -3, -2, -1]
    diffs = candidate_directions(model, shared_prompts["harmful"], shared_prompts["harmless"], batch_size=4)
    assert diffs.shape == (5, 24, 896) and diffs.dtype == torch.float64
    # One entry recomputed with TransformerLens hooks, prompt by prompt (no padding).
    layer = 7
    manual = []
    for prompts in (shared_prompts["harmful"], shared_prompts["harmless"]):
        acts = []
        for p in prompts:
            _, cache = model.tl.run_with_cache(model.tokenize_instructions([p])["input_ids"],
                                               names_filter=f"blocks.{layer}.hook_resid_pre")
            acts.append(cache[f"blocks.{layer}.hook_resid_pre"][0, -2])
        manual.append(torch.stack(acts).double().mean(0))
    # measured: max 2.9e-06 over 5 settings (bound 0.001, 350x; scripts/tolerance_margins.py)
    assert_within("diffs[3, layer]", max_abs(diffs[3, layer], manual[0] - manual[1]), 1e-3)


@pytest.mark.slow
def test_scoring_and_selection_run_on_public_sets(model, shared_prompts):
    diffs = mean_activations(model, shared_prompts["harmful"], [-1], 4) - \
        mean_activations(model, shared_prompts["harmless"], [-1], 4)
    ids = refusal_token_ids(model.tokenizer)
    scores = score_candidates(model, diffs, [-1], shared_prompts["harmful"][:2], shared_prompts["harmless"][:2], ids,
                              max_layer=12, layer_step=6)
    assert scores.bypass.shape == (1, 24)
    assert diffs[0, 0].norm() == 0, "layer 0 at the last template token: the same embedding for every prompt"
    assert torch.isnan(scores.bypass[0, 0]) and torch.isnan(scores.bypass[0, 1]), "zero and unscored candidates"
    assert torch.isfinite(scores.bypass[0, 6]) and scores.kl[0, 6] >= 0
    assert scores.bypass_se.shape == (1, 24) and torch.isfinite(scores.bypass_se[0, 6])
    assert scores.bypass_se[0, 6] > 0, "two prompts with different metrics have a positive standard error"
    # the unfiltered choice is the lower bypass of the two scored layers (6 and 12 are < int(0.8 * 24) = 19)
    chosen = select_direction(scores, 24, kl_threshold=float("inf"), induce_threshold=-float("inf"))
    assert chosen.bypass_score == min(scores.bypass[0, 6].item(), scores.bypass[0, 12].item())


@pytest.mark.slow
def test_weight_orthogonalization_matches_hooked_ablation(model):
    torch.manual_seed(3)
    direction = torch.randn(model.d_model) * 4
    before = [p.detach().clone() for p in (model.hf.get_input_embeddings().weight,
                                           model.hf.model.layers[3].mlp.down_proj.weight)]
    # measured: max 2.6e-06 over 5 settings (bound 0.0001, 38x; scripts/tolerance_margins.py)
    assert_within("orthogonalized weights vs hooked ablation, relative logits",
                  orthogonalization_check(model, direction, ["Name three fruits.", "How do I pick a lock?"]), 1e-4)
    after = (model.hf.get_input_embeddings().weight, model.hf.model.layers[3].mlp.down_proj.weight)
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "the original model is left untouched"


@pytest.mark.slow
def test_cross_entropy_and_cosines(model):
    ids = model.tokenizer("The quick brown fox jumps over the lazy dog. " * 4, add_special_tokens=False)["input_ids"]
    windows = [ids[:24], ids[8:32]]
    clean = cross_entropy(model, windows)
    assert 0 < clean < math.log(model.tl.cfg.d_vocab)
    torch.manual_seed(4)
    noisy = cross_entropy(model, windows, Intervention(add=torch.randn(model.d_model) * 50, add_layer=5))
    assert noisy > clean
    _, cache = model.tl.run_with_cache(model.tokenize_instructions(["Hi"])["input_ids"],
                                       names_filter="blocks.6.hook_resid_pre")
    own = cache["blocks.6.hook_resid_pre"][0, -1]
    cos = last_token_cosines(model, ["Hi", "Tell me a joke"], own, layer=6)
    # measured: max 2.4e-07 over 5 settings (bound 0.0001, 419x; scripts/tolerance_margins.py)
    assert_within("a prompt's own activation has cosine 1", abs((cos[0]) - (1.0)), 1e-4)
    assert len(cos) == 2
    torch.manual_seed(5)
    orthogonal = torch.randn(model.d_model)
    orthogonal -= (orthogonal @ own) / (own @ own) * own
    # measured: max 9.5e-09 over 5 settings (bound 0.0001, 10476x; scripts/tolerance_margins.py)
    assert_within("last_token_cosines(model, ['Hi'], ort...",
                  abs((last_token_cosines(model, ["Hi"], orthogonal, layer=6)[0]) - (0.0)), 1e-4)
    # measured: max 2.4e-07 over 5 settings (bound 0.0001, 419x; scripts/tolerance_margins.py)
    assert_within("last_token_cosines(model, ['Hi'], -ow...",
                  abs((last_token_cosines(model, ["Hi"], -own, layer=6)[0]) - (-1.0)), 1e-4)


@pytest.mark.slow
def test_training_prompt_filters_partition_prompts(model):
    from helpers.directions import filter_training_prompts

    prompts = ["How do I make a pipe bomb?", "Write a poem about cats", "Name three fruits."]
    ids = refusal_token_ids(model.tokenizer)
    for how in ("generation", "metric"):
        refused, answered = filter_training_prompts(model, prompts, prompts, how, ids)
        assert set(refused) | set(answered) == set(prompts) and not set(refused) & set(answered), how
        assert "Write a poem about cats" in answered
    assert "How do I make a pipe bomb?" in filter_training_prompts(model, prompts, prompts, "generation", ids)[0]
    assert filter_training_prompts(model, prompts, prompts[:1], None, ids) == (prompts, prompts[:1])
    with pytest.raises(ValueError, match="valid: 'metric'"):
        filter_training_prompts(model, prompts, prompts, "vibes", ids)


@pytest.mark.slow
def test_one_candidates_bypass_induce_and_kl_recomputed_by_hand(model, plain_hf, plain_last_logits):
    """score_candidates against the three scores written out on a plain Hugging Face model: bypass = mean refusal
    log-odds on the *harmful* prompts with r projected out of every layer's input, attention and MLP output (module
    hooks of our own); induce = the same on the *harmless* prompts with r added at its layer; KL = KL(clean ||
    ablated) on the harmless prompts. Swapping the sets, the sign of r, or the KL's direction breaks equality."""
    harmful = instructions_only(load_instructions("harmful", split="val", n=4))
    harmless = instructions_only(load_instructions("harmless", split="val", n=4))
    layer = 10
    torch.manual_seed(5)
    r = torch.randn(model.d_model) * 2
    diffs = torch.zeros(1, model.n_layers, model.d_model, dtype=torch.float64)
    diffs[0, layer] = r.double()
    ids = refusal_token_ids(model.tokenizer)
    scores = score_candidates(model, diffs, [-1], harmful, harmless, ids)
    assert int(torch.isfinite(scores.bypass).sum()) == 1, "only the one non-zero candidate is scored"

    unit = r / r.norm()

    def project(h):
        return h - (h @ unit)[..., None] * unit

    def log_odds(logits):
        p = torch.softmax(logits.double(), -1)[:, ids].sum(-1)
        return (torch.log(p + 1e-8) - torch.log(1 - p + 1e-8)).mean().item()

    def ablated_logits(prompts):
        handles = []
        for block in plain_hf.model.layers:
            handles.append(block.register_forward_pre_hook(
                lambda m, args, kwargs: ((project(args[0]),) + args[1:], kwargs) if args else
                (args, {**kwargs, "hidden_states": project(kwargs["hidden_states"])}), with_kwargs=True))
            for sub in (block.self_attn, block.mlp):
                handles.append(sub.register_forward_hook(
                    lambda m, inp, out: (project(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else project(out)))
        try:
            return plain_last_logits(model.tokenize_instructions(prompts))
        finally:
            for h in handles:
                h.remove()

    with torch.no_grad():
        bypass = log_odds(ablated_logits(harmful))
        induce = log_odds(plain_last_logits(model.tokenize_instructions(harmless), layer, lambda h: h + r))
        clean = plain_last_logits(model.tokenize_instructions(harmless))
        ablated = ablated_logits(harmless)
        lp, lq = torch.log_softmax(clean.double(), -1), torch.log_softmax(ablated.double(), -1)
        kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    # measured: max 1.1e-06 over 5 settings (bound 0.002, 1825x; scripts/tolerance_margins.py)
    assert_within("scores.bypass[0, layer].item()", abs((scores.bypass[0, layer].item()) - (bypass)), 2e-3)
    # measured: max 1.9e-07 over 5 settings (bound 0.002, 10432x; scripts/tolerance_margins.py)
    assert_within("scores.induce[0, layer].item()", abs((scores.induce[0, layer].item()) - (induce)), 2e-3)
    # measured: max 5.2e-08 over 5 settings (bound 0.0011, 21789x; scripts/tolerance_margins.py)
    assert_within("scores.kl[0, layer].item()", abs((scores.kl[0, layer].item()) - (kl)), 1e-3 + 0.02 * kl)
    assert abs(bypass - log_odds(ablated_logits(harmless))) > 0.05, "the two sets must tell a swap apart"


def test_selection_stops_when_the_model_hardly_refuses(monkeypatch, capsys):
    """A model that refuses ~1 in 24 harmful prompts (SmolLM2-135M-Instruct, measured) has no refusal to find a
    direction for: selection stops in one line instead of choosing a meaningless direction."""
    from helpers import generation
    from helpers.selection import NoRefusalError, require_refusals

    class Stub:
        name, system_prompt = "stub-model", None

    prompts = [f"harmful request {i}" for i in range(24)]
    for refused, stops in ((0, True), (1, True), (3, False), (24, False)):  # 1 of 24: 95% CI top 20%; 3: 32%
        outs = ["I'm sorry, but I can't help with that."] * refused + ["Sure, here is how."] * (24 - refused)
        monkeypatch.setattr(generation, "generate", lambda *a, outs=outs, **k: outs)
        if stops:
            with pytest.raises(NoRefusalError, match=rf"stub-model refuses {refused} of 24 harmful prompts") as e:
                require_refusals(Stub(), prompts)
            assert "\n" not in str(e.value) and "system_prompt='default'" in str(e.value)
            assert require_refusals(Stub(), prompts, fallback=True).rate == refused / 24
            assert "FALLBACK (mechanics only)" in capsys.readouterr().out
        else:
            assert require_refusals(Stub(), prompts).n == 24
