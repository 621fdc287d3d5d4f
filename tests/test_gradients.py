"""Notebook 06's refusal gradients: the scores against finite differences on the model, and the arithmetic of
the scoring rules on synthetic gradients."""

from types import SimpleNamespace

import pytest
import torch

from helpers import gradients as grads
from tolerances import assert_within, max_abs, scaled_error


class LinearSAE:
    def __init__(self, W_dec: torch.Tensor):
        self.W_dec = W_dec
        self.cfg = SimpleNamespace(d_sae=W_dec.shape[0])

    def encode(self, x):
        return torch.relu(x @ self.W_dec.T)


def synthetic_gradient(T: int = 6, d: int = 8, seed: int = 0) -> grads.RefusalGradient:
    torch.manual_seed(seed)
    return grads.RefusalGradient(instruction="x", tokens=["t"] * T, source_acts=torch.randn(T, d),
                                 grad=torch.randn(T, d), R=0.0, source_layer=1, target_layer=4)


def test_rules_agree_with_their_definitions():
    g = synthetic_gradient()
    W = torch.randn(5, 8) * 3
    sae = LinearSAE(W)
    unit = W / W.norm(dim=-1, keepdim=True)
    # measured: max 2.4e-07 over 5 settings (bound 1e-05, 42x; scripts/tolerance_margins.py)
    assert_within("sum rule vs its definition (float32)",
                  max_abs(grads.latent_scores(sae, g, "sum").float(), (g.grad @ unit.T).sum(0)), 1e-5)
    # measured: max 3.0e-08 over 5 settings (bound 1e-05, 336x; scripts/tolerance_margins.py)
    assert_within("mean rule vs its definition (float32)",
                  max_abs(grads.latent_scores(sae, g, "mean").float(), (g.grad @ unit.T).mean(0)), 1e-5)
    # measured: max 2.4e-07 over 5 settings (bound 1e-05, 42x; scripts/tolerance_margins.py)
    assert_within("last rule vs its definition (float32)",
                  max_abs(grads.latent_scores(sae, g, "last").float(), unit @ g.grad[-1]), 1e-5)
    f = torch.relu(g.source_acts @ W.T)
    # attribution scores reach ~10²: relative to max(|score|, 1)
    # measured: max 4.5e-07 over 5 settings (bound 1e-05, 22x; scripts/tolerance_margins.py)
    assert_within("attribution rule vs its definition (float32)",
                  scaled_error(grads.latent_scores(sae, g, "attribution").float(), (f * (g.grad @ W.T)).sum(0)), 1e-5)
    cos = grads.latent_scores(sae, g, "cosine")
    # measured: max 0.0e+00 over 5 settings (bound 1e-06, no rounding seen; scripts/tolerance_margins.py)
    assert_within("|cosine rule| above 1", max(cos.abs().max().item() - 1, 0.0), 1e-6)
    with pytest.raises(ValueError, match="rule must be one of"):
        grads.latent_scores(sae, g, "median")


def test_a_decoder_row_orthogonal_to_the_gradient_scores_zero():
    g = synthetic_gradient()
    mean_grad = g.grad.mean(0)
    row = torch.randn(8)
    row = row - (row @ mean_grad) / (mean_grad @ mean_grad) * mean_grad
    sae = LinearSAE(torch.stack([row, mean_grad]))
    s = grads.latent_scores(sae, g, "mean")
    assert s[1].item() > 0
    # measured: max 4.3e-08 over 5 settings (bound 1e-05, 230x; scripts/tolerance_margins.py)
    assert_within("orthogonal row's score relative to the aligned row's", abs(s[0].item()) / s[1].item(), 1e-5)


def test_r_orthogonal_reading_zeroes_the_r_aligned_latent():
    g = synthetic_gradient()
    r = torch.randn(8)
    sae = LinearSAE(torch.stack([r * 2, torch.randn(8)]))
    plain = grads.latent_scores(sae, g, "mean")
    orth = grads.latent_scores(sae, g, "mean", r_source=r)
    assert abs(plain[0].item()) > 1e-3
    # measured: max 4.9e-08 over 5 settings (bound 1e-05, 205x; scripts/tolerance_margins.py)
    assert_within("r-aligned score after the r-orthogonal reading, relative", abs(orth[0].item()) / abs(plain[0].item()),
                  1e-5)


def test_overlap_and_spearman():
    a = torch.arange(20.0)
    assert grads.overlap_at_k(a, a * 2, 10) == 1.0
    assert grads.overlap_at_k(a, -a, 10) == 0.0
    # measured: max 0.0e+00 over 5 settings (bound 1e-06, no rounding seen; scripts/tolerance_margins.py)
    assert_within("grads.spearman(a, a ** 3)", scaled_error(grads.spearman(a, a ** 3), 1.0), 1e-6)
    # measured: max 0.0e+00 over 5 settings (bound 1e-06, no rounding seen; scripts/tolerance_margins.py)
    assert_within("grads.spearman(a, -a)", scaled_error(grads.spearman(a, -a), -1.0), 1e-6)
    tops = grads.top_latents(a - 10, k=3)
    assert [k for k, _ in tops["positive"]] == [19, 18, 17] and [k for k, _ in tops["negative"]] == [0, 1, 2]


def test_spearman_averages_tied_ranks():
    """Ties share their average rank: by hand, x = [1,1,1,1,2] ranks [2.5,2.5,2.5,2.5,5] and y = [5,4,3,2,6] ranks
    [4,3,2,1,5]; Pearson of those ranks = 5 / sqrt(5 * 10) = 0.7071. Ranking by argsort (ties by position) gave 0."""
    x, y = torch.tensor([1.0, 1, 1, 1, 2]), torch.tensor([5.0, 4, 3, 2, 6])
    # measured: max 0.0e+00 over 5 settings (bound 1e-12, no rounding seen; scripts/tolerance_margins.py)
    assert_within("grads.spearman(x, y)", abs((grads.spearman(x, y)) - (5 / (5 * 10) ** 0.5)), 1e-12)
    sparse = torch.zeros(50)
    sparse[[3, 7]] = torch.tensor([2.0, -1.0])
    other = torch.zeros(50)
    other[[3, 9]] = torch.tensor([1.0, 4.0])
    ranks = lambda v: torch.tensor([(v < x).sum() + ((v == x).sum() + 1) / 2 for x in v], dtype=torch.float64)
    ra, rb = ranks(sparse), ranks(other)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    # measured: max 0.0e+00 over 5 settings (bound 1e-12, no rounding seen; scripts/tolerance_margins.py)
    assert_within("grads.spearman(sparse, other)",
                  abs((grads.spearman(sparse, other)) - (float(ra @ rb / (ra.norm() * rb.norm())))), 1e-12)


def test_separation_is_cohens_d():
    harmful = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    harmless = torch.tensor([[-1.0, 0.0], [-3.0, 0.0]])
    d = grads.separation(harmful, harmless)
    # measured: max 0.0e+00 over 5 settings (bound 1e-06, no rounding seen; scripts/tolerance_margins.py)
    assert_within("d[0].item()", scaled_error(d[0].item(), 4 / 2 ** 0.5), 1e-6)
    assert d[1].item() == 0.0


@pytest.mark.slow
def test_gradient_score_predicts_the_change_of_R_under_small_steering(model):
    """Finite differences: adding α·d̂ₖ at every prompt position changes R by α · (sum-rule score) to first order."""
    torch.manual_seed(0)
    r = torch.randn(model.d_model)
    prompt = "Develop a strategy for hugging a person"
    g = grads.refusal_gradient(model, prompt, source_layer=13, target_layer=18, r_target=r)
    assert g.grad.shape == g.source_acts.shape and g.grad.abs().max() > 0
    sae = LinearSAE(torch.randn(16, model.d_model))
    scores = grads.latent_scores(sae, g, "sum")
    unit = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    alpha = 0.5
    for k in scores.abs().argsort(descending=True)[:3].tolist():
        vecs = torch.stack([alpha * unit[k], -alpha * unit[k]])
        _, R = grads.steered_readout(model, prompt, vecs, 13, 18, r, refusal_ids=[0])
        finite = (R[0] - R[1]).item() / (2 * alpha)
        # measured: max 2.6e-03 over 5 settings (bound 0.05, 19x; scripts/tolerance_margins.py)
        assert_within("finite", abs((finite) - (scores[k].item())) / abs(scores[k].item()), 0.05)
    _, R0 = grads.steered_readout(model, prompt, torch.zeros(1, model.d_model), 13, 18, r, refusal_ids=[0])
    assert R0[0].item() == pytest.approx(g.R, rel=1e-4, abs=1e-4)


@pytest.mark.slow
def test_generate_steered_keeps_each_prompt_with_its_vector(model):
    """Rows are reordered by length inside generate; each prompt must still get its own vector: steering only
    the second prompt leaves the first prompt's completion as it was."""
    prompts = ["Name three fruits, please, in a list.", "Hi"]
    plain = grads.generate_steered(model, prompts, torch.zeros(2, model.d_model), 5, True, 6)
    torch.manual_seed(0)
    vecs = torch.zeros(2, model.d_model)
    vecs[1] = torch.randn(model.d_model) * 200
    steered = grads.generate_steered(model, prompts, vecs, 5, True, 6)
    assert steered[0] == plain[0] and steered[1] != plain[1]


def test_scores_over_chosen_positions_are_the_rules_on_those_rows():
    g = synthetic_gradient()
    W = torch.randn(5, 8) * 3
    sae, unit = LinearSAE(W), W / W.norm(dim=-1, keepdim=True)
    pos = torch.tensor([1, 2, 4])
    # measured: max 1.2e-07 over 5 settings (bound 1e-05, 84x; scripts/tolerance_margins.py)
    assert_within("mean over chosen positions", max_abs(grads.latent_scores(sae, g, "mean", positions=pos).float(),
                                                        (g.grad[pos] @ unit.T).mean(0)), 1e-5)
    f = torch.relu(g.source_acts[pos] @ W.T)
    # measured: max 6.5e-08 over 5 settings (bound 1e-05, 153x; scripts/tolerance_margins.py)
    assert_within("attribution over chosen positions",
                  scaled_error(grads.latent_scores(sae, g, "attribution", positions=pos).float(),
                               (f * (g.grad[pos] @ W.T)).sum(0)), 1e-5)
    assert torch.equal(grads.latent_scores(sae, g, "last", positions=pos), grads.latent_scores(sae, g, "last"))
    assert not torch.allclose(grads.latent_scores(sae, g, "mean", positions=pos), grads.latent_scores(sae, g, "mean"))
    with pytest.raises(ValueError, match="positions is empty"):
        grads.latent_scores(sae, g, "mean", positions=torch.tensor([], dtype=torch.long))


def _sets(per_request: dict[str, list[list[int]]]) -> dict[str, list[set[int]]]:
    return {n: [set(s) for s in sets] for n, sets in per_request.items()}


def test_specificity_tells_specific_from_shared_latents():
    k = 4
    specific = _sets({f"r{i}": [[10 * i + j for j in range(4)]] * 3 for i in range(5)})  # own latents, stable
    out = grads.specificity(specific, k, n_resamples=200)
    assert (out["within"]["estimate"], out["between"]["estimate"]) == (1.0, 0.0)
    assert out["difference"]["ci95"] == [1.0, 1.0] and grads.specificity_verdict(out)
    shared = _sets({f"r{i}": [[1, 2, 3, 4]] * 3 for i in range(5)})  # one generic set for every prompt
    out = grads.specificity(shared, k, n_resamples=200)
    assert (out["within"]["estimate"], out["between"]["estimate"]) == (1.0, 1.0) and not grads.specificity_verdict(out)
    # request-dependent but unstable under rewording: each wording has its own latents
    unstable = _sets({f"r{i}": [[100 * i + 10 * w + j for j in range(4)] for w in range(3)] for i in range(5)})
    out = grads.specificity(unstable, k, n_resamples=200)
    assert out["within"]["estimate"] == 0.0 and not grads.specificity_verdict(out)
    # mostly shared with one specific latent each: within 1, between 3/4: distinguishable, but most are shared
    mostly = _sets({f"r{i}": [[1, 2, 3, 50 + i]] * 3 for i in range(5)})
    out = grads.specificity(mostly, k, n_resamples=200)
    assert out["between"]["estimate"] == 0.75 and out["difference"]["ci95"][0] > 0
    assert not grads.specificity_verdict(out), "a quarter of the top-k specific is not prompt-specific"


def test_specificity_by_hand():
    """Two requests, two wordings each, k = 2: within = mean(1/2, 1/2) = 1/2; between = mean over the 4 cross pairs
    = (0 + 0 + 1/2 + 0) / 4 = 1/8 (the same number from either side)."""
    sets = _sets({"a": [[1, 2], [1, 3]], "b": [[3, 4], [4, 5]]})
    out = grads.specificity(sets, 2, n_resamples=50)
    # measured: max 0.0e+00 over 5 settings (bound 1e-12, no rounding seen; scripts/tolerance_margins.py)
    assert_within("within by hand", abs(out["within"]["estimate"] - 0.5), 1e-12)
    # measured: max 0.0e+00 over 5 settings (bound 1e-12, no rounding seen; scripts/tolerance_margins.py)
    assert_within("between by hand", abs(out["between"]["estimate"] - 0.125), 1e-12)
    with pytest.raises(ValueError, match="at least two requests"):
        grads.specificity({"a": [{1}, {2}], "b": [{3}]}, 1)


@pytest.mark.slow
def test_instruction_positions_spell_the_instruction_with_and_without_a_system_turn(model):
    from dataclasses import replace

    text = "Develop a strategy for hugging a person"
    for system_prompt in (None, "You are a helpful assistant."):
        view = replace(model, system_prompt=system_prompt)
        pos = grads.instruction_positions(view, text)
        ids = view.tokenize_instructions([text])["input_ids"][0]
        assert view.tokenizer.decode(ids[pos]).strip() == text
        assert pos.tolist() == list(range(pos[0].item(), pos[-1].item() + 1)), "one contiguous span"
        outside = [i for i in range(len(ids)) if i not in pos.tolist()]
        assert text.split()[0] not in view.tokenizer.decode(ids[outside]), "no instruction token left outside"
    with_system = grads.instruction_positions(replace(model, system_prompt="You are a helpful assistant."), text)
    assert with_system[0] > grads.instruction_positions(replace(model, system_prompt=None), text)[0]


def test_metric_by_kind_groups_wordings_in_order():
    import torch

    from helpers.gradients import metric_by_kind

    requests = {"lee/a": ["a1", "a2"], "harmful/b": ["b1"], "lee/c": ["c1"], "harmless/d": ["d1", "d2"]}
    out = metric_by_kind(requests, torch.tensor([1.0, -3.0, 2.0, 5.0, -1.0, -2.0]))
    assert list(out) == ["lee", "harmful", "harmless"]
    assert out["lee"] == {"mean": 1.0, "positive_share": pytest.approx(2 / 3), "n": 3}
    assert out["harmful"] == {"mean": 2.0, "positive_share": 1.0, "n": 1}
    assert out["harmless"]["mean"] == -1.5 and out["harmless"]["positive_share"] == 0.0
    with pytest.raises(ValueError, match="6 wordings"):
        metric_by_kind(requests, torch.zeros(5))
