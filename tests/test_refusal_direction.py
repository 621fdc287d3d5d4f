import math
import os

import pytest
import torch

from helpers.directions import candidate_directions, mean_activations, post_instruction_positions
from helpers.evaluation import cross_entropy, last_token_cosines, orthogonalization_check
from helpers.hooks import Intervention
from helpers.instructions import instructions_only, load_instructions
from helpers.judges import refusal_token_ids
from helpers.selection import CandidateScores, kl_last_token, score_candidates, select_direction


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
    with pytest.raises(RuntimeError, match="No candidate passes"):
        select_direction(scores, n_layers=10)


def test_kl_is_zero_for_identical_and_positive_otherwise():
    a = torch.randn(3, 11)
    assert torch.allclose(kl_last_token(a, a), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert (kl_last_token(a, a + torch.randn(3, 11)) > 0).all()


@pytest.fixture(scope="module")
def shared_prompts(shared_instructions):
    """Prompts from the public sets through the local-file option (as a user would pass them)."""
    def load(name, file, n):
        return instructions_only(load_instructions(name, path=os.path.join(shared_instructions, file), n=n))

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
    assert torch.allclose(diffs[3, layer], manual[0] - manual[1], atol=1e-3)


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
    chosen = select_direction(scores, 24, kl_threshold=float("inf"), induce_threshold=-float("inf"))
    assert chosen.layer == 6


@pytest.mark.slow
def test_weight_orthogonalization_matches_hooked_ablation(model):
    torch.manual_seed(3)
    direction = torch.randn(model.d_model) * 4
    before = [p.detach().clone() for p in (model.hf.get_input_embeddings().weight,
                                           model.hf.model.layers[3].mlp.down_proj.weight)]
    assert orthogonalization_check(model, direction, ["Name three fruits.", "How do I pick a lock?"]) <= 1e-4
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
    cos = last_token_cosines(model, ["Hi", "Tell me a joke"], torch.randn(model.d_model), layer=6)
    assert len(cos) == 2 and all(-1 <= c <= 1 for c in cos)


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
