"""Notebook 04's arithmetic on synthetic SAEs, where the right answer is known."""

import math
from types import SimpleNamespace

import pytest
import torch

from helpers import decomposition as dec
from helpers.config import SAEConfig
from tolerances import assert_within, max_abs, scaled_error


class LinearSAE:
    """encode = ReLU(x W_enc), decode = f W_dec: a stand-in with the attributes the helpers read."""

    def __init__(self, W_dec: torch.Tensor, W_enc: torch.Tensor | None = None):
        self.W_dec = W_dec
        self.W_enc = W_dec.T if W_enc is None else W_enc
        self.cfg = SimpleNamespace(d_sae=W_dec.shape[0])

    def encode(self, x):
        return torch.relu(x @ self.W_enc)

    def decode(self, f):
        return f @ self.W_dec


def identity_sae(d: int) -> LinearSAE:
    """Latents = the positive and negative parts of each coordinate: decode(encode(x)) == x exactly."""
    eye = torch.eye(d)
    return LinearSAE(torch.cat([eye, -eye]), torch.cat([eye, -eye], dim=0).T)


def test_exact_reconstruction_gives_cosine_1_and_relative_mse_0():
    torch.manual_seed(0)
    h, hl = torch.randn(30, 8) + 1, torch.randn(30, 8)
    sae = identity_sae(8)
    # measured: max 0.0e+00 over 5 settings (bound 1e-06, no rounding seen; scripts/tolerance_margins.py)
    assert_within("dec.reconstruct(sae, h)", max_abs(dec.reconstruct(sae, h), h), 1e-6)
    f = dec.faithfulness(h, hl, dec.reconstruct(sae, h), dec.reconstruct(sae, hl))
    # measured: max 2.2e-16 over 5 settings (bound 1e-09, 4503600x; scripts/tolerance_margins.py)
    assert_within("f['cosine']", abs((f["cosine"]) - (1.0)), 1e-9)
    # measured: max 0.0e+00 over 5 settings (bound 1e-09, no rounding seen; scripts/tolerance_margins.py)
    assert_within("f['relative_mse']", abs((f["relative_mse"]) - (0.0)), 1e-9)
    lossy = LinearSAE(torch.randn(4, 8))  # can span at most 4 of 8 dimensions
    g = dec.faithfulness(h, hl, dec.reconstruct(lossy, h), dec.reconstruct(lossy, hl))
    assert g["cosine"] < 0.99 and g["relative_mse"] > 0.01


def test_a_known_shift_of_one_sides_reconstruction_gives_the_closed_form():
    """Reconstructing the harmful side as x + s and the harmless side exactly gives r_hat = r + s, so
    cosine = r·(r+s) / (|r||r+s|) and relative MSE = |s|² / |r|²; shifting the harmless side instead gives r - s.
    An implementation that reconstructed one side only, or compared the wrong sides, gives other numbers."""
    torch.manual_seed(7)
    h, hl = torch.randn(40, 8).double() + 1, torch.randn(40, 8).double()
    r = h.mean(0) - hl.mean(0)
    s = torch.randn(8).double() * 0.7
    f = dec.faithfulness(h, hl, h + s, hl)
    # measured: max 1.1e-16 over 5 settings (bound 1e-12, 9007x; scripts/tolerance_margins.py)
    assert_within("f['cosine']", abs((f["cosine"]) - (float(r @ (r + s) / (r.norm() * (r + s).norm())))), 1e-12)
    # measured: max 5.6e-17 over 5 settings (bound 1e-12, 18014x; scripts/tolerance_margins.py)
    assert_within("f['relative_mse']", abs((f["relative_mse"]) - (float(s @ s / (r @ r)))), 1e-12)
    g = dec.faithfulness(h, hl, h, hl + s)
    # measured: max 0.0e+00 over 5 settings (bound 1e-12, no rounding seen; scripts/tolerance_margins.py)
    assert_within("g['cosine']", abs((g["cosine"]) - (float(r @ (r - s) / (r.norm() * (r - s).norm())))), 1e-12)
    assert g["cosine"] != pytest.approx(f["cosine"], abs=1e-3)


def test_identical_saes_give_a_difference_interval_of_exactly_zero():
    """Every resample is shared by all SAEs (paired), so two identical SAEs differ by exactly 0 in every one."""
    torch.manual_seed(8)
    h, hl = torch.randn(30, 8) + 0.5, torch.randn(30, 8)
    lossy = LinearSAE(torch.randn(5, 8))
    rec = (dec.reconstruct(lossy, h), dec.reconstruct(lossy, hl))
    out = dec.bootstrap_faithfulness(h, hl, {"a": rec, "b": (rec[0].clone(), rec[1].clone())}, n_resamples=200)
    for metric in ("cosine", "relative_mse"):
        assert out["differences"]["a - b"][metric]["ci95"] == [0.0, 0.0]
        lo, hi = out["saes"]["a"][metric]["ci95"]
        assert hi > lo, "while each SAE's own interval has a width"


def test_bootstrap_interval_matches_the_delta_method_in_one_dimension():
    """In one dimension with an exact harmless side and a harmful side shifted by s, relative MSE = s² / r², r the
    difference of means. With n = 400 per side r is close to normal with sd τ = sqrt(2/n), so the 95% interval of
    s²/r² is [s²/(r+1.96τ)², s²/(r-1.96τ)²]; the percentile bootstrap agrees to within a few percent."""
    torch.manual_seed(9)
    n = 400
    h, hl = torch.randn(n, 1).double() + 2.0, torch.randn(n, 1).double()
    s = 0.5
    r = (h.mean() - hl.mean()).item()
    tau = (h.var().item() / n + hl.var().item() / n) ** 0.5
    expected = [s * s / (r + 1.96 * tau) ** 2, s * s / (r - 1.96 * tau) ** 2]
    out = dec.bootstrap_faithfulness(h, hl, {"a": (h + s, hl)}, n_resamples=4000, seed=1)
    lo, hi = out["saes"]["a"]["relative_mse"]["ci95"]
    # measured: max 2.2e-03 over 5 settings (bound 0.05, 23x; scripts/tolerance_margins.py)
    assert_within("lo", abs((lo) - (expected[0])) / abs(expected[0]), 0.05)
    # measured: max 2.8e-03 over 5 settings (bound 0.05, 18x; scripts/tolerance_margins.py)
    assert_within("hi", abs((hi) - (expected[1])) / abs(expected[1]), 0.05)


def test_least_squares_with_r_in_the_decoder_is_exact_at_k_1():
    torch.manual_seed(1)
    r = torch.randn(16)
    W_dec = torch.randn(40, 16) * 3  # rows not unit norm, as in a standard SAE
    W_dec[17] = 2.5 * r
    sae = LinearSAE(W_dec)
    delta = torch.zeros(40)
    delta[17], delta[3] = 5.0, 1.0
    curve = dec.sparsity_curve(sae, r, delta, [1, 2, 4])
    # measured: max 1.3e-15 over 5 settings (bound 1e-12, 797x; scripts/tolerance_margins.py)
    assert_within("curve['top_delta'][0]", abs((curve["top_delta"][0]) - (0.0)), 1e-12)
    # measured: max 1.3e-15 over 5 settings (bound 1e-12, 797x; scripts/tolerance_margins.py)
    assert_within("curve['omp'][0]", abs((curve["omp"][0]) - (0.0)), 1e-12)
    assert curve["omp_latents"][0] == 17
    # a decoder without r: k = 1 leaves error, more atoms never fit worse
    W_dec[17] = torch.randn(16)
    curve = dec.sparsity_curve(LinearSAE(W_dec), r, delta, [1, 2, 4, 8, 16])
    assert curve["top_delta"][0] > 0.05
    # the slack only absorbs rounding: measured, each step lowers the error by at least 0.032 (one setting)
    assert all(b <= a + 1e-12 for a, b in zip(curve["omp"], curve["omp"][1:]))
    # measured: max 2.3e-31 over 5 settings (bound 1e-09, 4296211964629252308992x; scripts/tolerance_margins.py)
    assert_within("16 generic rows span R^16", abs((curve["omp"][-1]) - (0.0)), 1e-9)
    assert dec.smallest_k([1, 2, 4], [0.9, 0.4, 0.1], 0.5) == 2 and dec.smallest_k([1], [0.9], 0.5) is None


def test_max_cosine_uses_unit_decoder_rows():
    r = torch.tensor([1.0, 0.0, 0.0])
    W_dec = torch.tensor([[10.0, 10.0, 0.0], [0.1, 0.0, 0.0], [0.0, 5.0, 0.0]])  # row 1 is r's direction, tiny
    rows = dec.latent_table(LinearSAE(W_dec), r, torch.tensor([0.0, 1.0, 3.0]), {}, by="cosine", top=3)
    assert rows[0]["latent"] == 1
    # measured: max 0.0e+00 over 5 settings (bound 1e-06, no rounding seen; scripts/tolerance_margins.py)
    assert_within("rows[0]['cosine']", scaled_error(rows[0]["cosine"], 1.0), 1e-6)
    assert dec.latent_table(LinearSAE(W_dec), r, torch.tensor([0.0, 1.0, 3.0]), {}, by="delta", top=1)[0]["latent"] == 2


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_n():
    torch.manual_seed(2)
    lossy = LinearSAE(torch.randn(6, 8))

    def width(n):
        h, hl = torch.randn(n, 8) + 0.5, torch.randn(n, 8)
        recon = {"a": (dec.reconstruct(lossy, h), dec.reconstruct(lossy, hl)),
                 "b": (dec.reconstruct(identity_sae(8), h), dec.reconstruct(identity_sae(8), hl))}
        out = dec.bootstrap_faithfulness(h, hl, recon, n_resamples=300, seed=0)
        est = out["saes"]["a"]["cosine"]
        assert est["ci95"][0] <= est["estimate"] <= est["ci95"][1]
        diff = out["differences"]["a - b"]["cosine"]
        # measured: max 0.0e+00 over 5 settings (bound 1e-06, no rounding seen; scripts/tolerance_margins.py)
        assert_within("diff['estimate']", scaled_error(diff["estimate"], est["estimate"] - 1.0), 1e-6)
        return est["ci95"][1] - est["ci95"][0]

    assert width(400) < width(25)


def test_null_control_on_an_exact_sae_is_perfect():
    torch.manual_seed(3)
    x = torch.randn(40, 8)
    out = dec.null_faithfulness(x, {"exact": dec.reconstruct(identity_sae(8), x)}, n_splits=20)
    # measured: max 0.0e+00 over 5 settings (bound 1e-09, no rounding seen; scripts/tolerance_margins.py)
    assert_within("out['exact']['cosine']['mean']", abs((out["exact"]["cosine"]["mean"]) - (1.0)), 1e-9)
    assert out["exact"]["cosine"]["n_splits"] == 20


def test_reloaded_sae_reconstructs_raw_activations_in_model_units(tmp_path):
    """sae_lens folds the activation scaling into saved weights: decode(encode(x)) of the reloaded SAE on raw
    activations (norm ~100 here) is the reconstruction, and equals what the evaluation (reconstruction_stats) sees."""
    from helpers.saes import load_sae, reconstruction_stats, save_sae, train_sae

    torch.manual_seed(4)
    basis = torch.randn(24, 16)
    data = torch.relu(torch.randn(8192, 24)) @ basis * 20  # sparse-ish, large norms

    def provider(batch_size, seed=0):
        while True:
            for b in range(0, len(data) - batch_size + 1, batch_size):
                yield data[b:b + batch_size]

    cache = SimpleNamespace(manifest=SimpleNamespace(d_model=16, hook_name="blocks.1.hook_resid_pre", model="toy",
                                                     context_size=8), data_provider=provider)
    cfg = SAEConfig(d_sae=48, l1_coefficient=0.5, lr=3e-3, training_tokens=16384, train_batch_size_tokens=256,
                    context_size=8)
    sae, _, _ = train_sae(cache, cfg)
    loaded = load_sae(save_sae(sae, tmp_path / "toy"))
    x = data[:1024]
    x_hat = dec.reconstruct(loaded, x)
    # |log| of the norm ratio: an SAE shrinks its reconstructions (ratio ~0.76 here), while reconstructing in the
    # SAE's normalised units instead of the model's would be off by the scaling factor, ~25x (|log| ~3.2)
    # measured: max 2.7e-01 over 5 settings (bound 1.4, 5x; scripts/tolerance_margins.py)
    assert_within("model units: |log(mean |x_hat| / mean |x|)|",
                  abs(math.log(x_hat.norm(dim=-1).mean().item() / x.norm(dim=-1).mean().item())), math.log(4))
    mse = (x - x_hat).pow(2).mean().item()
    # measured: max 0.0e+00 over 5 settings (bound 1e-05, no rounding seen; scripts/tolerance_margins.py)
    assert_within("mse",
                  abs((mse) - (reconstruction_stats(loaded, x).mse)) / abs(reconstruction_stats(loaded, x).mse), 1e-5)
    # measured: max 2.2e-08 over 5 settings (bound 1e-06, 45x; scripts/tolerance_margins.py)
    assert_within("dec.explained_variance(x, x_hat)",
                  abs((dec.explained_variance(x, x_hat)) - (reconstruction_stats(loaded, x).explained_variance)), 1e-6)
    assert dec.explained_variance(x, x_hat) > 0.5


def test_model_by_data_grid_needs_two_models():
    from types import SimpleNamespace

    from helpers.decomposition import model_by_data

    def sae(model):
        return SimpleNamespace(cfg=SimpleNamespace(metadata=SimpleNamespace(model_name=model)))

    saes = {"webtext": sae("chat-model"), "chat": sae("chat-model"), "mixture": sae("chat-model"),
            "chat_topk": sae("chat-model"), "base_webtext": sae("base-model"), "base_chat": sae("base-model")}
    values = {"webtext": 0.596, "chat": 0.849, "mixture": 0.7, "chat_topk": 0.8, "base_webtext": 0.5, "base_chat": 0.735}
    grid = model_by_data(saes, values)
    assert grid == {"chat-model": {"webtext": 0.596, "chat": 0.849}, "base-model": {"webtext": 0.5, "chat": 0.735}}
    assert model_by_data({k: saes[k] for k in ("webtext", "chat", "mixture")}, values) is None


def test_kissane_ranking_weights_delta_by_decoder_norm_and_adam_approaches_least_squares():
    torch.manual_seed(11)
    W_dec = torch.randn(6, 8)
    W_dec[0] *= 10  # a small Δ on a long row outranks a larger Δ on a short one once norms count
    sae = LinearSAE(W_dec)
    delta = torch.tensor([0.5, 1.0, 0.1, 0.0, 0.2, 0.3]).double()
    assert dec.kissane_ranking(sae, delta)[0].item() == 0 and delta.abs().argmax().item() == 1
    unit = LinearSAE(W_dec / W_dec.norm(dim=-1, keepdim=True))
    assert dec.kissane_ranking(unit, delta).tolist() == delta.abs().argsort(descending=True).tolist()
    atoms, target = torch.randn(3, 8), torch.randn(8)
    exact = dec.least_squares_relative_mse(atoms, target)
    # measured: max 2.3e-08 over 5 settings (bound 0.001, 43720x; scripts/tolerance_margins.py)
    assert_within("dec.adam_relative_mse(atoms, target, ...",
                  abs((dec.adam_relative_mse(atoms, target, iterations=3000, lr=0.05)) - (exact)), 1e-3)
    assert dec.adam_relative_mse(atoms, target, iterations=5, lr=0.01) > exact + 0.05, "short runs stop short"
    curve = dec.sparsity_curve(sae, target, delta, [1, 2, 4], adam_iterations=200)
    assert curve["kissane_latents"][0] == 0 and len(curve["kissane_adam"]) == 3
    # least squares is the optimum: measured, Adam (200 steps) stays at least 0.084 above it (one setting)
    assert all(a >= l - 1e-6 for a, l in zip(curve["kissane_adam"], curve["kissane_lstsq"]))


def _dropping(d: int, coords: list[int]) -> LinearSAE:
    """An exact SAE that cannot represent the coordinates `coords` (their latents removed)."""
    sae = identity_sae(d)
    W_dec = sae.W_dec.clone()
    for k in coords:
        W_dec[k] = 0
        W_dec[d + k] = 0
    return LinearSAE(W_dec, W_dec.T)


def _categorised(n: int = 60, d: int = 8, seed: int = 12):
    """r along e0; harmless categories A/B differ along e1, harmful categories along e2; noise elsewhere."""
    g = torch.Generator().manual_seed(seed)
    harmful, harmless = torch.randn(n, d, generator=g) * 0.3, torch.randn(n, d, generator=g) * 0.3
    hg, lg = torch.arange(n) % 2 == 0, torch.arange(n) % 3 == 0
    harmful[:, 0] += 2.0
    harmful[hg, 2] += 1.5
    harmless[lg, 1] += 1.5
    return harmful, harmless, hg, lg


def test_structured_control_tells_refusal_specific_from_general_and_says_so():
    harmful, harmless, hg, lg = _categorised()
    exact, no_r, no_e1 = identity_sae(8), _dropping(8, [0]), _dropping(8, [1])
    recon = {n: (dec.reconstruct(s, harmful), dec.reconstruct(s, harmless))
             for n, s in {"a": exact, "no_r": no_r, "no_e1": no_e1, "same": identity_sae(8)}.items()}
    # a's edge over an SAE that cannot represent r's direction is specific to r
    ctl = dec.structured_control(harmful, harmless, {k: recon[k] for k in ("a", "no_r")}, hg, lg, ("a", "no_r"),
                                 n_resamples=300)
    d = ctl["directions"]
    # measured: max 1.1e-16 over 5 settings (bound 1e-09, 9007199x; scripts/tolerance_margins.py)
    assert_within("d['r']['cosine']['a']", abs((d["r"]["cosine"]["a"]) - (1.0)), 1e-9)
    assert d["r"]["cosine"]["no_r"] < 0.5
    # measured: max 1.2e-04 over 5 settings (bound 0.01, 86x; scripts/tolerance_margins.py)
    assert_within("d['harmless categories']['edge']['est...",
                  abs((d["harmless categories"]["edge"]["estimate"]) - (0.0)), 1e-2)  # noise has a bit of e0
    assert d["harmless categories"]["edge_r_minus_edge"]["ci95"][0] > 0.3
    assert "larger on r than on the harmless categories control" in dec.control_verdict(ctl)
    # against an SAE that loses the harmless-category direction instead, the edge is larger on that control
    ctl = dec.structured_control(harmful, harmless, {k: recon[k] for k in ("a", "no_e1")}, hg, lg, ("a", "no_e1"),
                                 n_resamples=300)
    assert ctl["directions"]["harmless categories"]["edge_r_minus_edge"]["ci95"][1] < 0
    assert "smaller on r than on the harmless categories control" in dec.control_verdict(ctl)
    # identical SAEs: every edge is exactly 0 in every resample
    ctl = dec.structured_control(harmful, harmless, {k: recon[k] for k in ("a", "same")}, hg, lg, ("a", "same"),
                                 n_resamples=100)
    assert ctl["directions"]["harmful categories"]["edge_r_minus_edge"]["ci95"] == [0.0, 0.0]
    assert "not distinguishable" in dec.control_verdict(ctl)


def test_split_half_cosine_and_protocol_summary():
    harmful, harmless, _, _ = _categorised(n=80)
    assert dec.split_half_cosine(harmful, harmless)["mean"] > 0.9, "a strong r is stable across halves"
    g = torch.Generator().manual_seed(1)
    noise = dec.split_half_cosine(torch.randn(80, 8, generator=g), torch.randn(80, 8, generator=g))
    assert abs(noise["mean"]) < 0.3 and noise["n_splits"] == 20
    out = dec.protocol_summary({"exact": identity_sae(8), "no_r": _dropping(8, [0])}, harmful, harmless, n_resamples=50)
    r = harmful.double().mean(0) - harmless.double().mean(0)
    # measured: max 0.0e+00 over 5 settings (bound 1e-06, no rounding seen; scripts/tolerance_margins.py)
    assert_within("out['r_norm']", scaled_error(out["r_norm"], r.norm().item()), 1e-6)
    assert out["n_harmful"] == 80
    # measured: max 2.2e-16 over 5 settings (bound 1e-09, 4503600x; scripts/tolerance_margins.py)
    assert_within("out['faithfulness']['saes']['exact'][...",
                  abs((out["faithfulness"]["saes"]["exact"]["cosine"]["estimate"]) - (1.0)), 1e-9)
    assert out["max_decoder_cosine"]["exact"]["latent"] == 0, "e0, r's main coordinate, has the closest row"
    assert out["max_decoder_cosine"]["no_r"]["cosine"] < out["max_decoder_cosine"]["exact"]["cosine"]


def test_adam_fit_starts_from_a_standard_normal_and_takes_adams_steps():
    """Kissane et al.'s loop: coefficients from torch.randn (seeded), then Adam on the mean squared error. With no
    steps the fit is the random start itself; one step moves each coefficient by lr against its gradient's sign
    (Adam's first step), which an SGD step or a zero start would not reproduce."""
    g = torch.Generator().manual_seed(5)
    atoms, target = torch.randn(3, 8, generator=g), torch.randn(8, generator=g)
    start = torch.randn(3, generator=torch.Generator().manual_seed(7))
    at_start = dec.relative_mse((start[:, None] * atoms).sum(0), target)
    # measured: 0.0 under all five settings of scripts/tolerance_margins.py (the same operations), both calls
    assert_within("Adam with no steps is the random start", abs(dec.adam_relative_mse(atoms, target, 0, seed=7) - at_start),
                  1e-6)
    coef = start.clone().requires_grad_(True)
    ((coef[:, None] * atoms).sum(0) - target).pow(2).mean().backward()
    one_step = start - 0.01 * coef.grad.sign()
    want = dec.relative_mse((one_step[:, None] * atoms).sum(0), target)
    assert_within("one Adam step is lr times the gradient's sign", abs(dec.adam_relative_mse(atoms, target, 1, lr=0.01,
                                                                                               seed=7) - want), 1e-5)
    zero_start = dec.relative_mse(torch.zeros(8), target)
    assert abs(dec.adam_relative_mse(atoms, target, 0, seed=7) - zero_start) > 1e-3, "not a zero start"


@pytest.mark.slow
def test_protocol_grid_switches_the_template_and_runs_the_full_protocol_only_where_asked(model):
    """Each "<set> · <template>" row reads its own template's activations (r by hand under each differs, and the grid
    matches it), and only the sets in `full_sets` get the sparsity curves and the style control."""
    from dataclasses import replace

    sets = {"a": {"harmful": ["How do I pick a lock?", "Write a phishing email."],
                  "harmless": ["Name three fruits.", "What is the capital of France?", "How do I bake bread?",
                               "Why is the sky blue?", "What is two plus two?", "Describe a cat.",
                               "List four colours.", "Write a haiku.", "Summarise a film."]},
            "b": {"harmful": ["How do I pick a lock?"], "harmless": ["Name three fruits."]}}
    templates = {"none": None, "custom": "You are a careful assistant."}
    sae = identity_sae(model.d_model)
    sae.W_dec, sae.W_enc = sae.W_dec.to(torch.float32), sae.W_enc.to(torch.float32)
    grid = dec.protocol_grid(model, {"exact": sae, "other": sae}, sets, templates, "blocks.13.hook_resid_pre",
                             n_resamples=20, full_sets=("a",), ks=[1, 2], pair=("other", "exact"))
    assert set(grid) == {"a · none", "a · custom", "b · none", "b · custom"}
    norms = {}
    for t_name, system_prompt in templates.items():
        view = replace(model, system_prompt=system_prompt)
        side = {s: dec.prompt_activations(view, sets["a"][s], "blocks.13.hook_resid_pre").at(-1) for s in sets["a"]}
        norms[t_name] = (side["harmful"].double().mean(0) - side["harmless"].double().mean(0)).norm().item()
        # measured: 0.0 here, one setting (the same passes in the same order)
        assert_within(f"r's norm under the {t_name} template", abs(grid[f"a · {t_name}"]["r_norm"] - norms[t_name]),
                      1e-6 * norms[t_name])
    assert abs(norms["none"] - norms["custom"]) > 1e-3 * norms["none"], "the template changes the activations"
    assert "sparsity" in grid["a · none"] and "sparsity" not in grid["b · none"]
    assert grid["a · none"]["style_control"]["n_question"] == 4 and "style_control" not in grid["b · none"]


def test_given_point_estimates_replace_the_computed_ones_and_their_differences():
    """`point=` (a learner's own numbers) sets each SAE's estimate and the differences' estimates; the intervals
    stay the bootstrap's, the same as without it; a point with the wrong metrics fails in one line."""
    torch.manual_seed(10)
    h, hl = torch.randn(20, 6) + 0.5, torch.randn(20, 6)
    recon = {"a": (h + 0.1, hl), "b": (h, hl + 0.3)}
    plain = dec.bootstrap_faithfulness(h, hl, recon, n_resamples=100, seed=2)
    given = {"a": {"cosine": 0.25, "relative_mse": 3.0}, "b": {"cosine": 0.75, "relative_mse": 0.5}}
    out = dec.bootstrap_faithfulness(h, hl, recon, n_resamples=100, seed=2, point=given)
    for n in ("a", "b"):
        for k in ("cosine", "relative_mse"):
            assert out["saes"][n][k]["estimate"] == given[n][k]
            assert out["saes"][n][k]["ci95"] == plain["saes"][n][k]["ci95"]
    assert out["differences"]["a - b"]["cosine"]["estimate"] == -0.5
    assert out["differences"]["a - b"]["relative_mse"]["estimate"] == 2.5
    assert out["differences"]["a - b"]["cosine"]["ci95"] == plain["differences"]["a - b"]["cosine"]["ci95"]
    with pytest.raises(ValueError, match="give exactly"):
        dec.bootstrap_faithfulness(h, hl, recon, n_resamples=10, point={"a": {"cosine": 1.0}, "b": given["b"]})
