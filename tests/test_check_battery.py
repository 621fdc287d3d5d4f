"""A battery per exercise check: at least 3 right implementations written differently (all must pass) and at least 10
plausible wrong ones (all must fail), each wrong one with the hint it must get, or None where the generic "differs
from the reference" message is what it gets. At least half of each exercise's wrong answers must get a named hint.
(tests/test_checks.py holds the checks' other cases and the model stage.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import checks
from helpers.hooks import Intervention

GENERIC = "differs from the reference"
POINTS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")


def _unit(v):
    return v / v.norm()


# -- difference_of_means(h, hl): [n, pos, layers, d] -> [pos, layers, d] --------------------------------------------

def _dom_in_place(h, hl):
    h -= hl.mean(0)
    return h.mean(0)


DOM_RIGHT = [
    lambda h, hl: h.double().mean(0) - hl.double().mean(0),
    lambda h, hl: h.mean(0) - hl.mean(0),
    lambda h, hl: h.sum(0) / h.shape[0] - hl.sum(0) / hl.shape[0],
    lambda h, hl: torch.mean(h - hl.mean(0, keepdim=True), dim=0),
    lambda h, hl: (h.mean(0) - hl.mean(0)).sub_(0),  # in place on a new tensor, not an input
]
DOM_WRONG = [
    ("sign", lambda h, hl: hl.mean(0) - h.mean(0), "sign is flipped"),
    ("normalised", lambda h, hl: F.normalize(h.mean(0) - hl.mean(0), dim=-1), "is normalised"),
    ("float16 then back", lambda h, hl: (h.half().mean(0) - hl.half().mean(0)).float(), "lost precision"),
    ("float16", lambda h, hl: h.half().mean(0) - hl.half().mean(0), "float16"),
    ("positions axis", lambda h, hl: h.mean(1) - hl.mean(1), "average over prompts (dim 0)"),
    ("every axis", lambda h, hl: h.mean() - hl.mean(), "average over prompts (dim 0)"),
    ("harmful mean only", lambda h, hl: h.mean(0), "only the harmful mean"),
    ("means added", lambda h, hl: h.mean(0) + hl.mean(0), "added the means"),
    ("pooled count", lambda h, hl: (h.sum(0) - hl.sum(0)) / (len(h) + len(hl)), None),
    ("median", lambda h, hl: h.median(0).values - hl.median(0).values, None),
    ("stub", lambda h, hl: (_ for _ in ()).throw(NotImplementedError()), "still raises NotImplementedError"),
    ("in place", _dom_in_place, "changed its argument 1 in place"),
    ("numpy", lambda h, hl: (h.mean(0) - hl.mean(0)).numpy(), "returned a ndarray"),
]


# -- ablation_hooks(r, n_layers) -> fwd_hooks ------------------------------------------------------------------------

def _abl(edit, points=POINTS, layers=None):
    def make(r, n_layers):
        u = r / r.norm()
        return [(f"blocks.{L}.{p}", lambda x, hook: edit(x, u.to(x), r.to(x)))
                for L in (range(n_layers) if layers is None else layers(n_layers)) for p in points]
    return make


def _abl_in_place_none(x, u, r):
    x -= (x @ u)[..., None] * u  # edits in place and forgets to return


def _abl_last_only(x, u, r):
    x = x.clone()
    x[:, -1] = x[:, -1] - (x[:, -1] @ u)[..., None] * u
    return x


ABL_RIGHT = [
    _abl(lambda x, u, r: x - (x @ u)[..., None] * u),
    _abl(lambda x, u, r: x - torch.einsum("bpd,d->bp", x, u)[..., None] * u),
    _abl(lambda x, u, r: x @ (torch.eye(len(u), dtype=x.dtype) - torch.outer(u, u))),
    _abl(lambda x, u, r: x - (x @ r)[..., None] * r / (r @ r)),
]
ABL_WRONG = [
    ("resid_pre only", _abl(lambda x, u, r: x - (x @ u)[..., None] * u, points=("hook_resid_pre",)), "only hook_resid_pre"),
    ("unnormalised", _abl(lambda x, u, r: x - (x @ r)[..., None] * r), "not normalised"),
    ("divided by |r| once", _abl(lambda x, u, r: x - (x @ r)[..., None] * r / r.norm()), "divided by ‖r‖ once"),
    ("zeros", _abl(lambda x, u, r: torch.zeros_like(x)), "zeroed"),
    ("added", _abl(lambda x, u, r: x + (x @ u)[..., None] * u), "add the projection"),
    ("projection kept", _abl(lambda x, u, r: (x @ u)[..., None] * u), "orthogonal part is lost"),
    ("layer 0 missing", _abl(lambda x, u, r: x - (x @ u)[..., None] * u, layers=lambda n: range(1, n)),
     "hook every layer"),
    ("no resid_pre", _abl(lambda x, u, r: x - (x @ u)[..., None] * u, points=POINTS[1:]), "missing ['blocks.0.hook_resid_pre'"),
    ("broadcasting", _abl(lambda x, u, r: x - (x @ u) * u), "your hook on blocks.0.hook_resid_pre raised"),
    ("returns None", _abl(_abl_in_place_none), "returned None"),
    ("a dict", lambda r, n: dict(_abl(lambda x, u, rr: x - (x @ u)[..., None] * u)(r, n)), "list of (hook name"),
    ("last position only", _abl(_abl_last_only), "only the last position"),
]


# -- addition_hooks(v, layer, coeff) -> fwd_hooks ---------------------------------------------------------------------

def _add(edit, name=lambda layer: f"blocks.{layer}.hook_resid_pre", layers=lambda layer: [layer]):
    def make(v, layer, coeff=1.0):
        return [(name(L), lambda x, hook: edit(x, v.to(x), coeff)) for L in layers(layer)]
    return make


def _add_last(x, v, c):
    x = x.clone()
    x[:, -1] += c * v
    return x


def _add_first(x, v, c):
    x = x.clone()
    x[:, 0] += c * v
    return x


def _add_checks_name(v, layer, coeff=1.0):
    def hook(x, hook):
        assert hook.name == f"blocks.{layer}.hook_resid_pre"
        return x + coeff * v.to(x)
    return [(f"blocks.{layer}.hook_resid_pre", hook)]


def _add_in_place_none(x, cv):
    x += cv  # edits in place and forgets to return


ADD_RIGHT = [
    _add(lambda x, v, c: x + c * v),
    _add(lambda x, v, c: torch.add(x, v, alpha=c)),
    _add(lambda x, v, c: x + (c * v)[None, None, :]),
    _add_checks_name,
]
ADD_WRONG = [
    ("normalised", _add(lambda x, v, c: x + c * v / v.norm()), "was normalised"),
    ("every layer", _add(lambda x, v, c: x + c * v, layers=lambda L: range(4)), "one layer only"),
    ("last position", _add(_add_last), "every position"),
    ("first position", _add(_add_first), "only the first position"),
    ("coeff ignored", _add(lambda x, v, c: x + v), "coeff is ignored"),
    ("sign", _add(lambda x, v, c: x - c * v), "sign is flipped"),
    ("next layer", _add(lambda x, v, c: x + c * v, name=lambda L: f"blocks.{L + 1}.hook_resid_pre"),
     "hook blocks.{layer}.hook_resid_pre"),
    ("resid_post", _add(lambda x, v, c: x + c * v, name=lambda L: f"blocks.{L}.hook_resid_post"),
     "hook blocks.{layer}.hook_resid_pre"),
    ("returns None", _add(lambda x, v, c: _add_in_place_none(x, c * v)), "returned None"),
    ("coeff squared", _add(lambda x, v, c: x + c * c * v), None),
    ("multiplied", _add(lambda x, v, c: x * (c * v)), None),
    ("shape slip", _add(lambda x, v, c: x + c * v[:, None]), "your hook on blocks.1.hook_resid_pre raised"),
]


# -- orthogonalize(W [d_model, d_in], r) -> W − r̂ r̂ᵀ W -----------------------------------------------------------

ORTH_RIGHT = [
    lambda W, r: W - torch.outer(_unit(r), _unit(r) @ W),
    lambda W, r: (torch.eye(len(r)) - torch.outer(_unit(r), _unit(r))) @ W,
    lambda W, r: W - _unit(r)[:, None] @ (_unit(r)[None, :] @ W),
    lambda W, r: W - torch.outer(r, r @ W) / (r @ r),
]
ORTH_WRONG = [
    ("unnormalised", lambda W, r: W - torch.outer(r, r @ W), "not normalised"),
    ("divided by |r| once", lambda W, r: W - torch.outer(r, r @ W) / r.norm(), "divided by ‖r‖ once"),
    ("the part", lambda W, r: torch.outer(_unit(r), _unit(r) @ W), "part to remove"),
    ("TL layout", lambda W, r: W - (W @ _unit(r))[:, None] * _unit(r), "rows of an nn.Linear weight"),
    ("unchanged", lambda W, r: W.clone(), "unchanged"),
    ("sign", lambda W, r: W + torch.outer(_unit(r), _unit(r) @ W), "sign is flipped"),
    ("in place", lambda W, r: W.sub_(torch.outer(_unit(r), _unit(r) @ W)), "changed its argument 1 in place"),
    ("transposed back", lambda W, r: (W - torch.outer(_unit(r), _unit(r) @ W)).T, "rows of an nn.Linear weight"),
    ("float16", lambda W, r: (W - torch.outer(_unit(r), _unit(r) @ W)).half(), "float16"),
    ("stub", lambda W, r: (_ for _ in ()).throw(NotImplementedError()), "still raises NotImplementedError"),
    ("r̂ on one side only", lambda W, r: W - torch.outer(_unit(r), r @ W), "divided by ‖r‖ once"),
    ("twice removed", lambda W, r: W - 2 * torch.outer(_unit(r), _unit(r) @ W), None),
]


# -- reconstruction(sae, h, hl) -> (cosine, relative MSE) of r̂ ----------------------------------------------------

def _recon(make, out=lambda rh, r: (float(F.cosine_similarity(rh, r, dim=0)),
                                        float((rh - r).pow(2).sum() / r.pow(2).sum()))):
    def fn(sae, h, hl):
        with torch.no_grad():
            rh, r = make(sae, h, hl)
        return out(rh.double(), r.double())
    return fn


def _rec(sae, x):
    return sae.decode(sae.encode(x))


def _both(sae, h, hl):
    return _rec(sae, h).mean(0) - _rec(sae, hl).mean(0), h.mean(0) - hl.mean(0)


RECON_RIGHT = [
    _recon(_both),
    _recon(lambda s, h, hl: (s(h).mean(0) - s(hl).mean(0), h.mean(0) - hl.mean(0))),  # sae_lens' forward: decode(encode)
    _recon(_both, out=lambda rh, r: (float(rh @ r / (rh.norm() * r.norm())), float(((rh - r) ** 2).mean() / (r ** 2).mean()))),
    _recon(lambda s, h, hl: (_rec(s, h.double().float()).double().mean(0) - _rec(s, hl).double().mean(0),
                              h.double().mean(0) - hl.double().mean(0))),
]
RECON_WRONG = [
    ("r through the SAE", _recon(lambda s, h, hl: (_rec(s, (h.mean(0) - hl.mean(0))[None])[0], h.mean(0) - hl.mean(0))),
     "passed r itself through the SAE"),
    ("harmful only", _recon(lambda s, h, hl: (_rec(s, h).mean(0) - hl.mean(0), h.mean(0) - hl.mean(0))),
     "only the harmful side"),
    ("harmless only", _recon(lambda s, h, hl: (h.mean(0) - _rec(s, hl).mean(0), h.mean(0) - hl.mean(0))),
     "only the harmless side"),
    ("MSE over |r̂|²", _recon(_both, out=lambda rh, r: (float(F.cosine_similarity(rh, r, dim=0)),
                                                          float((rh - r).pow(2).sum() / rh.pow(2).sum()))), "divided by ‖r̂‖²"),
    ("MSE not relative", _recon(_both, out=lambda rh, r: (float(F.cosine_similarity(rh, r, dim=0)),
                                                            float((rh - r).pow(2).sum()))), "not relative"),
    ("not squared", _recon(_both, out=lambda rh, r: (float(F.cosine_similarity(rh, r, dim=0)),
                                                       float((rh - r).norm() / r.norm()))), "squared norms"),
    ("swapped", _recon(_both, out=lambda rh, r: (float((rh - r).pow(2).sum() / r.pow(2).sum()),
                                                   float(F.cosine_similarity(rh, r, dim=0)))), "(cosine, relative MSE)"),
    ("dot product", _recon(_both, out=lambda rh, r: (float(rh @ r), float((rh - r).pow(2).sum() / r.pow(2).sum()))),
     "divide the dot product by both norms"),
    ("sign", _recon(lambda s, h, hl: (_rec(s, hl).mean(0) - _rec(s, h).mean(0), h.mean(0) - hl.mean(0))),
     "sign of r̂ is flipped"),
    ("encode only", _recon(lambda s, h, hl: (s.encode(h).mean(0) - s.encode(hl).mean(0), h.mean(0) - hl.mean(0))),
     "encode without decode"),
    ("a single number", lambda s, h, hl: 0.5, "should return a pair"),
    ("MSE of activations", _recon(lambda s, h, hl: (_rec(s, h).mean(0), h.mean(0))), None),
]


# -- max_cosine_latent(W_dec [d_sae, d], r) -> (latent, cosine) ------------------------------------------------------

def _cos(W, r):
    return (W / W.norm(dim=-1, keepdim=True)) @ r / r.norm()


def _maxcos_in_place(W, r):
    W /= W.norm(dim=-1, keepdim=True)
    cos = W @ r / r.norm()
    return int(cos.argmax()), float(cos.max())


MAXCOS_RIGHT = [
    lambda W, r: (int(_cos(W, r).argmax()), float(_cos(W, r).max())),
    lambda W, r: tuple(x.item() for x in reversed(F.cosine_similarity(W, r[None], dim=-1).max(0))),
    lambda W, r: (lambda c: (int(torch.argmax(c)), c[torch.argmax(c)].item()))(F.normalize(W, dim=-1) @ F.normalize(r, dim=0)),
    lambda W, r: (lambda v, i: (i, v))(*[x.item() for x in torch.max(_cos(W, r), dim=0)]),
]
MAXCOS_WRONG = [
    ("unnormalised", lambda W, r: (lambda i: (i, float(W[i] @ r / (W[i].norm() * r.norm()))))(int((W @ r).argmax())),
     "not normalised"),
    ("|cosine|", lambda W, r: (int(_cos(W, r).abs().argmax()), float(_cos(W, r).abs().max())), "|cosine|"),
    ("not over |r|", lambda W, r: (int(_cos(W, r).argmax()), float(_cos(W, r).max() * r.norm())), "not divided by ‖r‖"),
    ("argmin", lambda W, r: (int(_cos(W, r).argmin()), float(_cos(W, r).min())), "argmin"),
    ("swapped", lambda W, r: (float(_cos(W, r).max()), int(_cos(W, r).argmax())), "(latent index, cosine)"),
    ("columns normalised", lambda W, r: (lambda c: (int(c.argmax()), float(c.max())))((W / W.norm(dim=0)) @ r / r.norm()),
     "rows are not normalised"),
    ("transposed", lambda W, r: (lambda c: (int(c.argmax()), float(c.max())))(W.T @ r), "one row per latent"),
    ("in place", _maxcos_in_place, "changed its argument 1 in place"),
    ("a tensor", lambda W, r: _cos(W, r), "should return a pair"),
    ("second best", lambda W, r: (int(_cos(W, r).topk(2).indices[1]), float(_cos(W, r).topk(2).values[1])), None),
    ("dot product", lambda W, r: (int(_cos(W, r).argmax()), float((W @ r)[int(_cos(W, r).argmax())])), None),
    ("stub", lambda W, r: (_ for _ in ()).throw(NotImplementedError()), "still raises NotImplementedError"),
]


# -- least_squares(atoms [k, d], target [d]) -> relative MSE of the joint fit ------------------------------------------

def _rel(fit, t):
    return float((fit - t).pow(2).sum() / t.pow(2).sum())


def _ls_in_place(a, t):
    t -= a.T @ torch.linalg.lstsq(a.T, t[:, None]).solution[:, 0]
    return float(t.pow(2).sum())


LS_RIGHT = [
    lambda a, t: _rel(a.T.double() @ torch.linalg.lstsq(a.T.double(), t.double()[:, None]).solution[:, 0], t.double()),
    lambda a, t: _rel(a.double().T @ (torch.linalg.pinv(a.double().T) @ t.double()), t.double()),
    lambda a, t: _rel(a.T @ torch.linalg.solve(a @ a.T, a @ t), t),
    lambda a, t: (lambda q: float(((t - q @ (q.T @ t)) ** 2).mean() / (t ** 2).mean()))(torch.linalg.qr(a.T.double())[0].float()),
]
LS_WRONG = [
    ("one at a time", lambda a, t: _rel(sum((t @ x) / (x @ x) * x for x in a), t), "one at a time"),
    ("best single", lambda a, t: min(_rel((t @ x) / (x @ x) * x, t) for x in a), "best single atom"),
    ("not relative", lambda a, t: float((a.T @ torch.linalg.pinv(a.T) @ t - t).pow(2).sum()), "not relative"),
    ("not squared", lambda a, t: float((a.T @ (torch.linalg.pinv(a.T) @ t) - t).norm() / t.norm()), "squared norms"),
    ("explained", lambda a, t: 1 - _rel(a.T @ (torch.linalg.pinv(a.T) @ t), t), "explained fraction"),
    ("coefficients", lambda a, t: torch.linalg.pinv(a.T) @ t, "returned shape (3,)"),
    ("orientation", lambda a, t: _rel(a.T @ torch.linalg.lstsq(a, t[:, None]).solution[:, 0], t), "atoms is [k, d]"),
    ("relative to the fit", lambda a, t: (lambda f: float((f - t).pow(2).sum() / f.pow(2).sum()))(a.T @ (torch.linalg.pinv(a.T) @ t)),
     "relative to the fit"),
    ("two atoms of three", lambda a, t: _rel(a[:2].T @ (torch.linalg.pinv(a[:2].T) @ t), t), None),
    ("in place", _ls_in_place, "changed its argument 2 in place"),
    ("float16", lambda a, t: torch.tensor(_rel(a.T @ (torch.linalg.pinv(a.T) @ t), t)).half(), "float16"),
    ("stub", lambda a, t: (_ for _ in ()).throw(NotImplementedError()), "still raises NotImplementedError"),
]


# -- latent_interventions(sae, latent, layer, norm) -> (ablation, addition) ------------------------------------------

def _iv(row=lambda s, k: s.W_dec.detach()[k].float(), unit=True, add=lambda d, n: d * n, layer=lambda L: L, **extra):
    def fn(sae, latent, L, norm):
        d = row(sae, latent)
        d = d / d.norm() if unit else d
        return Intervention(ablate=d, **extra.get("ablation", {})), Intervention(add=add(d, norm), add_layer=layer(L),
                                                                               **extra.get("addition", {}))
    return fn


IV_RIGHT = [
    _iv(),
    _iv(add=lambda d, n: d, addition={"coeff": None}),  # replaced below: coeff=norm with the unit row
    lambda s, k, L, n: (Intervention(ablate=F.normalize(s.W_dec.detach()[k], dim=0)),
                        Intervention(add=n * F.normalize(s.W_dec.detach()[k], dim=0), add_layer=L)),
    lambda s, k, L, n: (lambda d: (Intervention(ablate=5 * d), Intervention(add=d * n, add_layer=L)))(
        s.W_dec.detach()[k] / s.W_dec.detach()[k].norm()),  # ablation projects out the direction: its scale is moot
]
IV_RIGHT[1] = lambda s, k, L, n: (lambda d: (Intervention(ablate=d), Intervention(add=d, add_layer=L, coeff=n)))(
    s.W_dec.detach()[k] / s.W_dec.detach()[k].norm())
IV_WRONG = [
    ("encoder", _iv(row=lambda s, k: s.W_enc.detach()[:, k].float()), "encoder's column"),
    ("raw row", _iv(unit=False), "not normalised"),
    ("wrong layer", _iv(layer=lambda L: L + 1), "add_layer=2"),
    ("sign", _iv(add=lambda d, n: -d * n), "wrong way"),
    ("norm ignored", _iv(add=lambda d, n: d), "`norm` is ignored"),
    ("both", lambda s, k, L, n: (lambda a, b: (Intervention(ablate=a.ablate, add=b.add, add_layer=L), b))(*_iv()(s, k, L, n)),
     "the ablation also sets add="),
    ("stray edit", _iv(addition={"edit": lambda x: x, "edit_layer": 2}), "the addition also sets edit="),
    ("prompt only", _iv(addition={"prompt_only": True}), "also sets prompt_only="),
    ("another latent", _iv(row=lambda s, k: s.W_dec.detach()[k + 1].float()), "not latent 5's decoder row"),
    ("tensors", lambda s, k, L, n: (s.W_dec[k], s.W_dec[k] * n), "two helpers.hooks.Intervention"),
    ("no ablate", lambda s, k, L, n: (Intervention(), _iv()(s, k, L, n)[1]), "needs ablate="),
    ("norm squared", _iv(add=lambda d, n: d * n * n), None),
]


# -- projection_gradient(forward, resid, direction) -> ∇ R ----------------------------------------------------------

def _grad(read):
    def fn(forward, resid, direction):
        x = resid.detach().clone().requires_grad_(True)
        read(forward(x), direction).backward()
        return x.grad
    return fn


def _grad_no_requires(forward, resid, direction):
    (forward(resid)[-1] @ _unit(direction)).backward()
    return resid.grad


def _grad_in_place(forward, resid, direction):
    resid.requires_grad_(True)
    (forward(resid)[-1] @ _unit(direction)).backward()
    return resid.grad


GRAD_RIGHT = [
    _grad(lambda y, r: y[-1] @ _unit(r)),
    lambda f, x, r: (lambda xx: torch.autograd.grad(f(xx)[-1] @ _unit(r), xx)[0])(x.detach().clone().requires_grad_(True)),
    lambda f, x, r: torch.func.grad(lambda z: f(z)[-1] @ _unit(r))(x),
    _grad(lambda y, r: (y @ r)[-1] / r.norm()),
]
GRAD_WRONG = [
    ("unnormalised", _grad(lambda y, r: y[-1] @ r), "not normalised"),
    ("|r|²", _grad(lambda y, r: y[-1] @ r / (r @ r)), "divided by ‖r‖²"),
    ("every position", _grad(lambda y, r: (y @ _unit(r)).sum()), "*last* token only"),
    ("sign", _grad(lambda y, r: -(y[-1] @ _unit(r))), "sign is flipped"),
    ("first position", _grad(lambda y, r: y[0] @ _unit(r)), "first position"),
    ("mean over positions", _grad(lambda y, r: (y @ _unit(r)).mean()), None),
    ("no requires_grad", _grad_no_requires, "requires_grad"),
    ("R itself", lambda f, x, r: f(x)[-1] @ _unit(r), "returned shape ()"),
    ("output", lambda f, x, r: f(x), None),
    ("norm of the output", _grad(lambda y, r: y[-1].norm()), None),
    ("stub", lambda f, x, r: (_ for _ in ()).throw(NotImplementedError()), "still raises NotImplementedError"),
    ("float16", lambda f, x, r: _grad(lambda y, rr: y[-1] @ _unit(rr))(f, x, r).half(), "float16"),
]


# -- latent_scores(W_dec [d_sae, d], grad [T, d]) -> [d_sae] ----------------------------------------------------------

def _scores_in_place(W, g):
    W /= W.norm(dim=-1, keepdim=True)
    return (g @ W.T).mean(0)


SCORES_RIGHT = [
    lambda W, g: (g @ (W / W.norm(dim=-1, keepdim=True)).T).mean(0),
    lambda W, g: torch.einsum("td,kd->k", g, F.normalize(W, dim=-1)) / g.shape[0],
    lambda W, g: F.normalize(W, dim=-1) @ g.mean(0),
    lambda W, g: (W @ g.T).mean(1) / W.norm(dim=-1),
]
SCORES_WRONG = [
    ("unnormalised", lambda W, g: (g @ W.T).mean(0), "not normalised"),
    ("last position", lambda W, g: F.normalize(W, dim=-1) @ g[-1], "last position only"),
    ("first position", lambda W, g: F.normalize(W, dim=-1) @ g[0], "first position only"),
    ("sum", lambda W, g: (g @ F.normalize(W, dim=-1).T).sum(0), "sum over positions"),
    ("sign", lambda W, g: -(g @ F.normalize(W, dim=-1).T).mean(0), "sign is flipped"),
    ("abs", lambda W, g: (g @ F.normalize(W, dim=-1).T).abs().mean(0), "absolute values"),
    ("not reduced", lambda W, g: g @ F.normalize(W, dim=-1).T, "reduce over positions"),
    ("over latents", lambda W, g: (g @ F.normalize(W, dim=-1).T).mean(1), "reduce over positions"),
    ("in place", _scores_in_place, "changed its argument 1 in place"),
    ("max over positions", lambda W, g: (g @ F.normalize(W, dim=-1).T).max(0).values, None),
    ("columns normalised", lambda W, g: (g @ (W / W.norm(dim=0)).T).mean(0), None),
    ("cosine", lambda W, g: (F.normalize(g, dim=-1) @ F.normalize(W, dim=-1).T).mean(0), None),
]


# -- orthogonalized_model(hf, r, project) -> a copy with r projected out of what writes to the residual stream ------

def _orth(embed=True, attn=True, mlp=True, bias=True, untie=True, copy_first=True, layers=None, extra=(),
          embed_side="transpose"):
    import copy

    def make(hf, r, project):
        m = copy.deepcopy(hf) if copy_first else hf
        with torch.no_grad():
            emb = m.get_input_embeddings()
            if untie:
                m.lm_head.weight = torch.nn.Parameter(emb.weight.detach().clone())
            if embed:
                emb.weight.data = (project(emb.weight.data.T, r).T if embed_side == "transpose" else
                                   project(emb.weight.data, r) if embed_side == "untransposed" else
                                   emb.weight.data - torch.outer(emb.weight.data @ r, r) / (r @ r))
            for i, layer in enumerate(m.model.layers):
                if layers is not None and i not in layers:
                    continue
                for lin in ([layer.self_attn.o_proj] if attn else []) + ([layer.mlp.down_proj] if mlp else []):
                    lin.weight.data = project(lin.weight.data, r)
                    if bias and lin.bias is not None:
                        lin.bias.data = project(lin.bias.data[:, None], r)[:, 0]
                for attr in extra:
                    lin = layer.self_attn.get_submodule(attr) if "proj" in attr and attr[0] in "qkv" else layer.mlp.get_submodule(attr)
                    lin.weight.data = lin.weight.data - torch.outer(lin.weight.data @ r, r) / (r @ r)
        return m
    return make


def _orth_by_name(hf, r, project):
    import copy

    m = copy.deepcopy(hf)
    m.lm_head.weight = torch.nn.Parameter(m.lm_head.weight.detach().clone())
    u = r / r.norm()
    with torch.no_grad():
        for n, prm in m.named_parameters():
            if n.endswith(("o_proj.weight", "down_proj.weight")):
                prm -= torch.outer(u, u @ prm)
            elif n.endswith(("o_proj.bias", "down_proj.bias")):
                prm -= (prm @ u) * u
            elif n == "model.embed_tokens.weight":
                prm -= torch.outer(prm @ u, u)
    return m


def _orth_untie_by_config(hf, r, project):
    import copy

    m = copy.deepcopy(hf)
    m.config.tie_word_embeddings = False
    m.lm_head.weight = torch.nn.Parameter(m.get_output_embeddings().weight.data.clone())
    return _orth(untie=False, copy_first=False)(m, r, project)


ORTHM_RIGHT = [_orth(), _orth_by_name, _orth_untie_by_config,
               _orth(embed_side="rows")]  # W_E − (W_E r̂) r̂ᵀ is the transpose's projection written out
ORTHM_WRONG = [
    ("in place", _orth(copy_first=False), "changed the model it was given"),
    ("returns None", lambda hf, r, p: None, "returned None"),
    ("no embedding", _orth(embed=False), "token embedding was left out"),
    ("tied unembedding", _orth(untie=False), "unembedding (lm_head) changed"),
    ("no attention", _orth(attn=False), "attention outputs (self_attn.o_proj) were left out"),
    ("no MLP", _orth(mlp=False), "MLP outputs (mlp.down_proj) were left out"),
    ("no biases", _orth(bias=False), "biases were left out"),
    ("layer 0 only", _orth(layers={0}), "layers 1 of 2"),
    ("queries too", _orth(extra=("q_proj",)), "q_proj.weight changed, but it reads"),
    ("MLP input too", _orth(extra=("up_proj",)), "up_proj.weight changed, but it reads"),
    ("embedding untransposed", _orth(embed_side="untransposed"), "the embedding is [vocab, d_model]"),
    ("stub", lambda hf, r, p: (_ for _ in ()).throw(NotImplementedError()), "still raises NotImplementedError"),
    ("o_proj on its input side", lambda hf, r, p: _orth()(hf, r, lambda w, d: w - torch.outer(w @ _unit(d), _unit(d))
                                                           if w.shape[0] == w.shape[1] else p(w, d)), None),
]


# -- top_k_curve(W_dec, r, delta, ks, fit) -> [relative MSE per k] ----------------------------------------------------

def _tk(rank=lambda W, r, d: d.abs().argsort(descending=True), shift=0, normalise=True, pick=None):
    def make(W, r, d, ks, fit):
        rows = W / W.norm(dim=-1, keepdim=True) if normalise else W
        order = rank(W, r, d)
        return [fit(rows[order[:k + shift]] if pick is None else pick(rows, order, k, r), r) for k in ks]
    return make


def _tk_in_place(W, r, d, ks, fit):
    W /= W.norm(dim=-1, keepdim=True)
    return [fit(W[d.abs().argsort(descending=True)[:k]], r) for k in ks]


def _tk_lstsq(W, r, d, ks, fit):
    out = []
    for k in ks:
        A = W[d.abs().topk(k).indices].T.double()
        c = torch.linalg.lstsq(A, r.double()[:, None]).solution
        out.append(((A @ c)[:, 0] - r.double()).pow(2).sum().item() / r.double().pow(2).sum().item())
    return out


TK_RIGHT = [
    _tk(),
    _tk(rank=lambda W, r, d: d.abs().topk(len(d)).indices),
    _tk(rank=lambda W, r, d: torch.tensor(sorted(range(len(d)), key=lambda i: -abs(float(d[i]))))),
    _tk(normalise=False),  # least squares is blind to the rows' lengths
    _tk_lstsq,
]
TK_WRONG = [
    ("signed", _tk(rank=lambda W, r, d: d.argsort(descending=True)), "ranked by the signed Δ"),
    ("ascending", _tk(rank=lambda W, r, d: d.abs().argsort()), "smallest |Δ|"),
    ("by cosine", _tk(rank=lambda W, r, d: (F.normalize(W, dim=-1) @ r).argsort(descending=True)), "ranked by decoder cosine"),
    ("Kissane's ranking", _tk(rank=lambda W, r, d: (d.abs() * W.norm(dim=-1)).argsort(descending=True)),
     "Kissane et al.'s ranking"),
    ("k - 1", _tk(shift=-1), "uses k − 1 latents"),
    ("k + 1", _tk(shift=1), "uses k + 1 latents"),
    ("index order", _tk(rank=lambda W, r, d: torch.arange(len(d))), "index order"),
    ("best single", _tk(pick=lambda rows, order, k, r: rows[order[:k]][
        min(range(k), key=lambda i: float(((rows[order[i]] @ r) / rows[order[i]].norm() ** 2 * rows[order[i]] - r).norm()))
    ][None]), "best single latent"),
    ("transposed", lambda W, r, d, ks, fit: [fit(W.T[:, d.abs().argsort(descending=True)[:k]], r) for k in ks],
     "pass W_dec[top_k], not its transpose"),
    ("last k only", lambda W, r, d, ks, fit: _tk()(W, r, d, ks[-1:], fit), "one relative MSE per k"),
    ("in place", _tk_in_place, "changed its argument 1 in place"),
    ("stub", lambda W, r, d, ks, fit: (_ for _ in ()).throw(NotImplementedError()), "still raises NotImplementedError"),
    ("mean atom", _tk(pick=lambda rows, order, k, r: rows[order[:k]].mean(0, keepdim=True)), None),
]


# -- clamp_edit(sae, latent, value) -> edit(x) = x + decode(f') - decode(f) ------------------------------------------

def _ce(set_latent=lambda f2, k, v: f2.__setitem__((..., k), v), combine=lambda x, d2, d1: x + d2 - d1, clone=True):
    def make(sae, k, v):
        def edit(x):
            f = sae.encode(x)
            f2 = f.clone() if clone else f
            set_latent(f2, k, v)
            return combine(x, sae.decode(f2), sae.decode(f))
        return edit
    return make


def _ce_closed_form(sae, k, v):
    return lambda x: x + (v - sae.encode(x)[..., k, None]) * sae.W_dec[k]


def _ce_where(sae, k, v):
    def edit(x):
        f = sae.encode(x)
        mask = torch.zeros(f.shape[-1], dtype=torch.bool)
        mask[k] = True
        return x - sae.decode(f) + sae.decode(torch.where(mask, torch.full_like(f, v), f))
    return edit


def _ce_in_place(sae, k, v):
    def edit(x):
        f = sae.encode(x)
        f2 = f.clone()
        f2[..., k] = v
        x += sae.decode(f2) - sae.decode(f)
        return x
    return edit


def _ce_last(f2, k, v):
    f2[:, -1, k] = v


CE_RIGHT = [_ce(), _ce_closed_form, _ce_where, _ce(combine=lambda x, d2, d1: d2 + (x - d1))]
CE_WRONG = [
    ("reconstruction only", _ce(combine=lambda x, d2, d1: d2), "error term is missing"),
    ("no subtraction", _ce(combine=lambda x, d2, d1: x + d2), "without subtracting decode(f)"),
    ("adds the row", lambda sae, k, v: (lambda x: x + v * sae.W_dec[k]), "without removing what the latent already wrote"),
    ("unit row", lambda sae, k, v: (lambda x: x + (v - sae.encode(x)[..., k, None]) * F.normalize(sae.W_dec[k], dim=-1)),
     "decoder row was normalised"),
    ("no clone", _ce(clone=False), "Clone f before setting the latent"),
    ("every latent", _ce(set_latent=lambda f2, k, v: f2.fill_(v)), "every latent was set"),
    ("last position", _ce(set_latent=_ce_last), "only the last position"),
    ("off by one", _ce(set_latent=lambda f2, k, v: f2.__setitem__((..., (k + 1) % f2.shape[-1]), v)), "off by one"),
    ("to zero", _ce(set_latent=lambda f2, k, v: f2.__setitem__((..., k), 0.0)), "clamped to 0"),
    ("returns a tensor", lambda sae, k, v: sae.W_dec[k] * v, "should return a function"),
    ("in place", _ce_in_place, "changed its argument 1 in place"),
    ("stub", lambda sae, k, v: (_ for _ in ()).throw(NotImplementedError()), "still raises NotImplementedError"),
    ("half the value", _ce(set_latent=lambda f2, k, v: f2.__setitem__((..., k), v / 2)), None),
]


BATTERY = {
    "difference_of_means": (checks.difference_of_means, DOM_RIGHT, DOM_WRONG),
    "ablation_hooks": (checks.ablation_hooks, ABL_RIGHT, ABL_WRONG),
    "addition_hooks": (checks.addition_hooks, ADD_RIGHT, ADD_WRONG),
    "orthogonalize": (checks.orthogonalize, ORTH_RIGHT, ORTH_WRONG),
    "orthogonalized_model": (checks.orthogonalized_model, ORTHM_RIGHT, ORTHM_WRONG),
    "reconstruction": (checks.reconstruction, RECON_RIGHT, RECON_WRONG),
    "max_cosine_latent": (checks.max_cosine_latent, MAXCOS_RIGHT, MAXCOS_WRONG),
    "least_squares": (checks.least_squares, LS_RIGHT, LS_WRONG),
    "top_k_curve": (checks.top_k_curve, TK_RIGHT, TK_WRONG),
    "latent_interventions": (checks.latent_interventions, IV_RIGHT, IV_WRONG),
    "clamp_edit": (checks.clamp_edit, CE_RIGHT, CE_WRONG),
    "projection_gradient": (checks.projection_gradient, GRAD_RIGHT, GRAD_WRONG),
    "latent_scores": (checks.latent_scores, SCORES_RIGHT, SCORES_WRONG),
}


# -- layer_map(tl, ids, source, target) -> (source [T, d], forward) (on the model) -------------------------------------

def _lm(read_at=0, stop_at=0, hook="hook_resid_pre", edit="replace", no_grad=False, batch=False, fwd_batch=False,
        ignore_x=False):
    def make(tl, ids, S, T):
        with torch.no_grad():
            source = tl(ids, stop_at_layer=S + read_at)
        source = source if batch else source[0]

        def forward(x):
            def h(acts, hook):
                xx = x.to(acts)[None]
                if edit == "add":
                    return acts + xx
                if edit == "last":
                    return torch.cat([acts[:, :-1], xx[:, -1:]], 1)
                return xx

            hooks = [] if ignore_x else [(f"blocks.{S}.{hook}", h)]
            with tl.hooks(fwd_hooks=hooks), (torch.no_grad() if no_grad else torch.enable_grad()):
                out = tl(ids, stop_at_layer=T + stop_at)
            return out if fwd_batch else out[0]
        return source, forward
    return make


def _lm_run_with_cache(tl, ids, S, T):
    _, cache = tl.run_with_cache(ids, names_filter=f"blocks.{S}.hook_resid_pre")
    source = cache[f"blocks.{S}.hook_resid_pre"][0].detach()

    def forward(x):
        with tl.hooks(fwd_hooks=[(f"blocks.{S}.hook_resid_pre", lambda a, hook: x[None].to(a))]):
            return tl(ids, stop_at_layer=T).squeeze(0)
    return source, forward


def _lm_hook_checks_position(tl, ids, S, T):
    source, _ = _lm()(tl, ids, S, T)

    def forward(x):
        def h(acts, hook):
            assert acts.shape[1] == x.shape[0], "positions differ"
            out = acts.clone()
            out[0] = x
            return out
        with tl.hooks(fwd_hooks=[(f"blocks.{S}.hook_resid_pre", h)]):
            return tl(ids, stop_at_layer=T)[0]
    return source, forward


LM_RIGHT = [_lm(), _lm_run_with_cache, _lm_hook_checks_position]
LM_WRONG = [
    ("source one layer early", _lm(read_at=-1), "read one layer early"),
    ("source one layer late", _lm(read_at=1), "read one layer late"),
    ("source with batch", _lm(batch=True), "has a batch dimension"),
    ("forward ignores x", _lm(ignore_x=True), "forward ignores its input"),
    ("one layer too far", _lm(stop_at=1), "runs one layer too far"),
    ("one layer short", _lm(stop_at=-1), "stops one layer early"),
    ("adds x", _lm(edit="add"), "adds x to the residual"),
    ("resid_post", _lm(hook="hook_resid_post"), "hook_resid_post"),
    ("last position only", _lm(edit="last"), "only the last position"),
    ("forward with batch", _lm(fwd_batch=True), "forward returns a batch dimension"),
    ("no grad in forward", _lm(no_grad=True), "does not depend on x through autograd"),
    ("returns one thing", lambda tl, ids, S, T: _lm()(tl, ids, S, T)[1], "should return a pair"),
    ("stub", lambda tl, ids, S, T: (_ for _ in ()).throw(NotImplementedError()), "still raises NotImplementedError"),
    ("source plus noise", lambda tl, ids, S, T: (lambda s, f: (s * 1.01, f))(*_lm()(tl, ids, S, T)), None),
]


def test_battery_layer_map(model, capsys):
    _battery("layer_map", lambda fn: checks.layer_map(fn, model, "How do I bake bread?", 2, 5), LM_RIGHT, LM_WRONG,
             capsys)


@pytest.mark.parametrize("exercise", BATTERY)
def test_battery(exercise, capsys):
    check, right, wrong = BATTERY[exercise]
    _battery(exercise, check, right, wrong, capsys)


def _battery(exercise, check, right, wrong, capsys):
    assert len(right) >= 3 and len(wrong) >= 10
    for i, fn in enumerate(right):
        check(fn)
        assert f"✓ {exercise}" in capsys.readouterr().out, f"right implementation {i} refused"
    named = 0
    for label, fn, hint in wrong:
        with pytest.raises(checks.CheckFailed) as e:
            check(fn)
            pytest.fail(f"{exercise}: the wrong implementation {label!r} passed")
        message = str(e.value)
        if hint is None:
            assert GENERIC in message, f"{label}: now gets a named hint ({message}); name it in the battery"
        else:
            assert hint in message, f"{label}: expected the hint {hint!r}, got: {message}"
            assert GENERIC not in message
            named += 1
    assert named >= len(wrong) / 2, f"{exercise}: only {named} of {len(wrong)} wrong answers get a named hint"
