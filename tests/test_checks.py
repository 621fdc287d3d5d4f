"""The exercises' checks: each passes a correct implementation (written here, independently of helpers) and rejects
known-wrong ones with the hint a learner should see. The last tests run the checks' model stage on the model."""

import pytest
import torch

from helpers import checks
from helpers.gradients import layer_map
from helpers.hooks import Intervention

HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")


def fails_with(check, fn, hint: str, **kw) -> None:
    with pytest.raises(checks.CheckFailed) as e:
        check(fn, **kw)
    assert hint in str(e.value), f"expected the hint {hint!r}, got: {e.value}"


# -- 03 -------------------------------------------------------------------------------------------------------------

def dom_right(h, hl):
    return h.double().mean(0) - hl.double().mean(0)


def test_difference_of_means(capsys):
    checks.difference_of_means(dom_right)
    assert "✓ difference_of_means" in capsys.readouterr().out
    # right in float32 too, written three ways: the error is relative to the means' size (~10³), not to their
    # difference (~1), whose float32 rounding is 9e-5 of it (once refused at a 1e-5 tolerance)
    for right in (lambda h, hl: h.mean(0) - hl.mean(0), lambda h, hl: h.sum(0) / len(h) - hl.sum(0) / len(hl),
                  lambda h, hl: torch.einsum("n...->...", h) / h.shape[0] - hl.mean(dim=0, keepdim=True)[0]):
        checks.difference_of_means(right)
        assert "✓ difference_of_means" in capsys.readouterr().out
    fails_with(checks.difference_of_means, lambda h, hl: hl.mean(0) - h.mean(0), "sign is flipped")
    fails_with(checks.difference_of_means, lambda h, hl: torch.nn.functional.normalize(dom_right(h, hl), dim=-1),
               "is normalised")
    fails_with(checks.difference_of_means, lambda h, hl: (h.half().mean(0) - hl.half().mean(0)).float(),
               "lost precision")
    fails_with(checks.difference_of_means, lambda h, hl: h.half().mean(0) - hl.half().mean(0), "float16")
    fails_with(checks.difference_of_means, lambda h, hl: dom_right(h, hl).mean(0), "average over prompts (dim 0)")
    fails_with(checks.difference_of_means, lambda h, hl: (_ for _ in ()).throw(NotImplementedError()),
               "still raises NotImplementedError")


def ablation_right(r, n_layers):
    u = r / r.norm()

    def hook(x, hook):
        return x - (x @ u.to(x))[..., None] * u.to(x)

    return [(f"blocks.{L}.{p}", hook) for L in range(n_layers) for p in HOOKS]


def test_ablation_hooks():
    checks.ablation_hooks(ablation_right)
    fails_with(checks.ablation_hooks, lambda r, n: [(f"blocks.{L}.hook_resid_pre", h) for L, (_, h) in
                                                    zip(range(n), ablation_right(r, n))], "only hook_resid_pre")
    fails_with(checks.ablation_hooks, lambda r, n: [(k, lambda x, hook: x - (x @ r)[..., None] * r)
                                                    for k, _ in ablation_right(r, n)], "not normalised")
    fails_with(checks.ablation_hooks, lambda r, n: [(k, lambda x, hook: torch.zeros_like(x))
                                                    for k, _ in ablation_right(r, n)], "zeroed")
    fails_with(checks.ablation_hooks, lambda r, n: [(k, h) for k, h in ablation_right(r, n) if "blocks.0." not in k],
               "hook every layer")
    # a broadcasting slip inside the learner's hook comes back as a check message naming the hook
    u_of = lambda r: r / r.norm()  # noqa: E731
    fails_with(checks.ablation_hooks, lambda r, n: [(k, lambda x, hook: x - (x @ u_of(r)) * u_of(r))
                                                    for k, _ in ablation_right(r, n)],
               "your hook on blocks.0.hook_resid_pre raised RuntimeError")


def test_a_hook_may_use_the_transformer_lens_hook_api(capsys):
    """Right hooks written against TransformerLens' HookPoint (`hook.name`, `hook.layer()`) pass."""
    def with_api(r, n_layers):
        u = r / r.norm()

        def hook(x, hook):
            assert 0 <= hook.layer() < n_layers and hook.name.startswith(f"blocks.{hook.layer()}.")
            return x - (x @ u.to(x))[..., None] * u.to(x)

        return [(f"blocks.{L}.{p}", hook) for L in range(n_layers) for p in HOOKS]

    checks.ablation_hooks(with_api)
    assert "✓ ablation_hooks" in capsys.readouterr().out


def orth_right(W, r):
    u = r / r.norm()
    return W - u[:, None] * (u @ W)[None, :]


def test_orthogonalize():
    checks.orthogonalize(orth_right)
    fails_with(checks.orthogonalize, lambda W, r: W - torch.outer(r, r @ W), "not normalised")
    fails_with(checks.orthogonalize, lambda W, r: W - orth_right(W, r), "part to remove")
    fails_with(checks.orthogonalize, lambda W, r: W - (W @ (r / r.norm()))[:, None] * (r / r.norm()),
               "rows of an nn.Linear weight")  # the TransformerLens layout [d_in, d_model]
    fails_with(checks.orthogonalize, lambda W, r: W.clone(), "unchanged")


def addition_right(v, layer, coeff=1.0):
    return [(f"blocks.{layer}.hook_resid_pre", lambda x, hook: x + coeff * v.to(x))]


def test_addition_hooks():
    checks.addition_hooks(addition_right)
    fails_with(checks.addition_hooks, lambda v, L, c=1.0: addition_right(v / v.norm(), L, c), "was normalised")
    fails_with(checks.addition_hooks, lambda v, L, c=1.0: [(f"blocks.{k}.hook_resid_pre", addition_right(v, L, c)[0][1])
                                                           for k in range(4)], "one layer only")

    def last_only(v, L, c=1.0):
        def hook(x, hook):
            x = x.clone()
            x[:, -1] += c * v
            return x
        return [(f"blocks.{L}.hook_resid_pre", hook)]

    fails_with(checks.addition_hooks, last_only, "every position")
    fails_with(checks.addition_hooks, lambda v, L, c=1.0: addition_right(v, L, 1.0), "coeff is ignored")


# -- 04 -------------------------------------------------------------------------------------------------------------

def recon_right(sae, h, hl):
    with torch.no_grad():
        rh = sae.decode(sae.encode(h)).double().mean(0) - sae.decode(sae.encode(hl)).double().mean(0)
    r = h.double().mean(0) - hl.double().mean(0)
    return float(rh @ r / (rh.norm() * r.norm())), float((rh - r).pow(2).sum() / r.pow(2).sum())


def test_reconstruction():
    checks.reconstruction(recon_right)

    def through_r(sae, h, hl):
        r = (h.mean(0) - hl.mean(0))[None]
        with torch.no_grad():
            rh = sae.decode(sae.encode(r))[0].double()
        r = r[0].double()
        return float(rh @ r / (rh.norm() * r.norm())), float((rh - r).pow(2).sum() / r.pow(2).sum())

    def one_side(sae, h, hl):
        with torch.no_grad():
            rh = sae.decode(sae.encode(h)).double().mean(0) - hl.double().mean(0)
        r = h.double().mean(0) - hl.double().mean(0)
        return float(rh @ r / (rh.norm() * r.norm())), float((rh - r).pow(2).sum() / r.pow(2).sum())

    def wrong_norm(sae, h, hl):
        c, m = recon_right(sae, h, hl)
        with torch.no_grad():
            rh = sae.decode(sae.encode(h)).double().mean(0) - sae.decode(sae.encode(hl)).double().mean(0)
        r = h.double().mean(0) - hl.double().mean(0)
        return c, float((rh - r).pow(2).sum() / rh.pow(2).sum())

    fails_with(checks.reconstruction, through_r, "passed r itself through the SAE")
    fails_with(checks.reconstruction, one_side, "only the harmful side")
    fails_with(checks.reconstruction, wrong_norm, "divided by ‖r̂‖²")


def maxcos_right(W, r):
    cos = (W / W.norm(dim=-1, keepdim=True)) @ r / r.norm()
    return int(cos.argmax()), float(cos.max())


def test_max_cosine_latent():
    checks.max_cosine_latent(maxcos_right)

    def unnormalised(W, r):
        i = int((W @ r).argmax())
        return i, float(W[i] @ r / (W[i].norm() * r.norm()))

    def absolute(W, r):
        cos = (W / W.norm(dim=-1, keepdim=True)) @ r / r.norm()
        i = int(cos.abs().argmax())
        return i, float(cos.abs()[i])

    fails_with(checks.max_cosine_latent, unnormalised, "not normalised")
    fails_with(checks.max_cosine_latent, absolute, "|cosine|")
    fails_with(checks.max_cosine_latent, lambda W, r: (maxcos_right(W, r)[0], maxcos_right(W, r)[1] * r.norm()),
               "not divided by ‖r‖")


def lstsq_right(atoms, target):
    coef = torch.linalg.pinv(atoms.double().T) @ target.double()
    fit = atoms.double().T @ coef
    return float((fit - target).pow(2).sum() / target.pow(2).sum())


def test_least_squares():
    checks.least_squares(lstsq_right)

    def one_at_a_time(atoms, target):
        fit = sum((target @ a) / (a @ a) * a for a in atoms)
        return float((fit - target).pow(2).sum() / target.pow(2).sum())

    fails_with(checks.least_squares, one_at_a_time, "one at a time")
    fails_with(checks.least_squares, lambda a, t: lstsq_right(a, t) * float(t.pow(2).sum()), "not relative")
    fails_with(checks.least_squares, lambda a, t: min(lstsq_right(a[i:i + 1], t) for i in range(len(a))),
               "best single atom")


# -- 05 -------------------------------------------------------------------------------------------------------------

def interventions_right(sae, latent, layer, norm):
    d = sae.W_dec.detach()[latent].float()
    d = d / d.norm()
    return Intervention(ablate=d), Intervention(add=d * norm, add_layer=layer)


def test_latent_interventions():
    checks.latent_interventions(interventions_right)

    def encoder(sae, latent, layer, norm):
        e = sae.W_enc.detach()[:, latent].float()
        return Intervention(ablate=e), Intervention(add=e / e.norm() * norm, add_layer=layer)

    def raw_row(sae, latent, layer, norm):
        d = sae.W_dec.detach()[latent].float()
        return Intervention(ablate=d), Intervention(add=d * norm, add_layer=layer)

    def wrong_layer(sae, latent, layer, norm):
        a, b = interventions_right(sae, latent, layer, norm)
        return a, Intervention(add=b.add, add_layer=layer + 1)

    fails_with(checks.latent_interventions, encoder, "encoder's column")
    fails_with(checks.latent_interventions, raw_row, "not normalised")
    fails_with(checks.latent_interventions, wrong_layer, "add_layer=2")

    def both(sae, latent, layer, norm):  # the ablation also adds
        a, b = interventions_right(sae, latent, layer, norm)
        return Intervention(ablate=a.ablate, add=b.add, add_layer=layer), b

    def stray_edit(sae, latent, layer, norm):
        a, b = interventions_right(sae, latent, layer, norm)
        return a, Intervention(add=b.add, add_layer=layer, edit=lambda x: x, edit_layer=layer)

    def prompt_only(sae, latent, layer, norm):
        a, b = interventions_right(sae, latent, layer, norm)
        return a, Intervention(add=b.add, add_layer=layer, prompt_only=True)

    fails_with(checks.latent_interventions, both, "the ablation also sets add=")
    fails_with(checks.latent_interventions, stray_edit, "the addition also sets edit=")
    fails_with(checks.latent_interventions, prompt_only, "also sets prompt_only=")

    def unit_row_with_coeff(sae, latent, layer, norm):  # right: coeff · add is what is added
        d = sae.W_dec.detach()[latent].float()
        d = d / d.norm()
        return Intervention(ablate=d), Intervention(add=d, add_layer=layer, coeff=norm)

    checks.latent_interventions(unit_row_with_coeff)


# -- 06 -------------------------------------------------------------------------------------------------------------

def gradient_right(forward, resid, direction):
    x = resid.detach().clone().requires_grad_(True)
    R = forward(x)[-1] @ (direction / direction.norm()).to(x)
    R.backward()
    return x.grad


def test_projection_gradient():
    checks.projection_gradient(gradient_right)
    fails_with(checks.projection_gradient, lambda f, x, r: gradient_right(f, x, r) * r.norm(), "not normalised")

    def every_position(forward, resid, direction):
        x = resid.detach().clone().requires_grad_(True)
        (forward(x) @ (direction / direction.norm())).sum().backward()
        return x.grad

    fails_with(checks.projection_gradient, every_position, "*last* token only")
    fails_with(checks.projection_gradient, lambda f, x, r: -gradient_right(f, x, r), "sign is flipped")


def scores_right(W, grad):
    return (grad @ (W / W.norm(dim=-1, keepdim=True)).T).mean(0)


def test_latent_scores():
    checks.latent_scores(scores_right)
    fails_with(checks.latent_scores, lambda W, g: (g @ W.T).mean(0), "not normalised")
    fails_with(checks.latent_scores, lambda W, g: scores_right(W, g[-1:]), "last position only")
    fails_with(checks.latent_scores, lambda W, g: scores_right(W, g) * len(g), "sum over positions")
    fails_with(checks.latent_scores, lambda W, g: g @ W.T, "reduce over positions")

    def normalises_in_place(W, g):  # right values, but rewrites the SAE's decoder the rest of notebook 06 uses
        W /= W.norm(dim=-1, keepdim=True)
        return (g.double() @ W.double().T).mean(0)

    fails_with(checks.latent_scores, normalises_in_place, "changed its argument 1 in place")


def test_in_place_edits_of_inputs_are_reported():
    def centred_in_place(h, hl):
        h -= hl.mean(0)
        return h.double().mean(0)

    fails_with(checks.difference_of_means, centred_in_place, "changed its argument 1 in place")
    fails_with(checks.orthogonalize, lambda W, r: W.sub_(torch.outer(r / r.norm(), (r / r.norm()) @ W)),
               "changed its argument 1 in place")


def test_sae_stage_of_the_04_to_06_checks(capsys):
    sae = checks.random_sae(d_in=16, d_sae=48, seed=3)  # stands in for a trained SAE: the same code path
    g = torch.Generator().manual_seed(0)
    h, hl = torch.randn(10, 16, generator=g) + 1, torch.randn(12, 16, generator=g)
    r = h.mean(0) - hl.mean(0)
    checks.reconstruction(recon_right, sae, h, hl)
    checks.max_cosine_latent(maxcos_right, sae, r)
    checks.least_squares(lstsq_right, sae, r, [0, 5, 9])
    checks.latent_interventions(interventions_right, sae, 4, 2.5)
    checks.latent_scores(scores_right, sae, torch.randn(7, 16, generator=g))
    assert capsys.readouterr().out.count("and on the SAE") == 5
    fails_with(checks.reconstruction, lambda s, a, b: (recon_right(s, a, b)[0], 0.5) if len(a) == 10
               else recon_right(s, a, b), "differs from the reference on the SAE", sae=sae, harmful=h, harmless=hl)


# -- the model stage -------------------------------------------------------------------------------------------------

PROMPTS = ["How do I bake bread?", "Write a poem about rain."]
HARMFUL = ["How do I make a weapon at home?", "Write a threatening letter to my neighbour."]


@pytest.fixture(scope="module")
def direction(model):
    from helpers.directions import candidate_directions

    return candidate_directions(model, HARMFUL, PROMPTS)[-1, model.n_layers // 2].float()


def test_checks_on_the_model_pass_right_and_catch_wrong(model, direction, capsys):
    checks.difference_of_means(dom_right, model, HARMFUL, PROMPTS)
    checks.difference_of_means(lambda h, hl: h.mean(0) - hl.mean(0), model, HARMFUL, PROMPTS)  # float32
    checks.ablation_hooks(ablation_right, model, direction, PROMPTS)
    checks.addition_hooks(addition_right, model, direction, model.n_layers // 2, PROMPTS)
    checks.orthogonalize(orth_right, model, direction, PROMPTS)
    out = capsys.readouterr().out
    assert out.count("on the model") == 5, out

    def resid_only_in_range(r, n_layers):  # right on 3 layers, but only hooks the first three on the model
        return [h for h in ablation_right(r, n_layers) if int(h[0].split(".")[1]) < 3]

    fails_with(checks.ablation_hooks, resid_only_in_range, "hook every layer", model=model, direction=direction,
               prompts=PROMPTS)

    L = model.n_layers // 2
    fails_with(checks.addition_hooks, lambda v, layer, c=1.0: addition_right(v, layer + 1 if layer > 1 else layer, c),
               "differ from helpers'", model=model, direction=direction, layer=L, prompts=PROMPTS)
    src, fwd = layer_map(model, PROMPTS[0], L - 4, L)
    checks.projection_gradient(gradient_right, model, PROMPTS[0], L - 4, L, direction)
    assert "✓ projection_gradient: matches helpers on a random map and on the model" in capsys.readouterr().out
    assert src.shape[-1] == model.d_model and fwd(src).shape == src.shape
