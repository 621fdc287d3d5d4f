"""The refusal direction in an SAE's latents (Kissane et al. 2024): faithfulness, sparsity, refusal latents.

Everything here works on activations in the model's own units: sae_lens folds the activation-norm
scaling into the saved weights, so `sae.decode(sae.encode(x))` on raw activations is the
reconstruction. Decoder rows of a standard SAE are not unit norm; every cosine or regression
against a direction uses unit-normalised rows (`unit_decoder`).

- `prompt_activations`: residual activations of chat-formatted prompts at one layer, every token.
- `faithfulness`: cosine and relative MSE of the reconstructed difference of means against the true
  one, with paired bootstrap intervals over prompts (`bootstrap_faithfulness`).
- `null_faithfulness`: the same for differences between random halves of one side: how well each SAE
  reconstructs a noise-sized difference between chat-formatted prompts. Both halves carry the chat format, so it
  cannot tell refusal from chat format; `structured_control` (directions of r's kind without refusal) is the
  control for that question.
- `sparsity_curve`: relative MSE of the best least-squares fit of r with k decoder rows, for the top-k
  latents by |Δ activation| and by orthogonal matching pursuit (`omp`).
- `latent_table`, `latent_dashboard_html`: the refusal latents and what they respond to.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from helpers.files import pause_point
from helpers.models import LoadedModel
from helpers.saes import encode_batches, on_sae

PAPER = {  # Kissane et al. (2024), Qwen1.5-0.5B-Chat, blocks.13.hook_resid_pre, 32,768 latents
    "cosine": {"chat": 0.849, "webtext": 0.596, "base_model_chat": 0.735},
    "max_decoder_cosine": {"chat": 0.678, "webtext": 0.411},
}


@dataclass
class PromptActivations:
    """Residual activations of each prompt (no padding): `acts[i]` is `[T_i, d_model]`, `tokens[i]` `[T_i]`."""

    instructions: list[str]
    tokens: list[Tensor]
    acts: list[Tensor]

    def at(self, position: int) -> Tensor:
        """`[n_prompts, d_model]` at one position (negative: from the end, e.g. -1 = last template token)."""
        return torch.stack([a[position] for a in self.acts])


@torch.no_grad()
def prompt_activations(model: LoadedModel, instructions: list[str], hook_name: str,
                       desc: str = "prompt activations") -> PromptActivations:
    """`hook_name` (`blocks.L.hook_resid_pre`) at every token of each chat-formatted prompt, one prompt per
    pass (no padding, so nothing depends on how a batch is padded)."""
    from helpers.activations import hook_layer
    from helpers.instructions import check_instructions

    instructions = check_instructions(instructions)
    layer = hook_layer(hook_name, model.n_layers, model.name)
    tokens, acts = [], []
    for text in tqdm(instructions, desc=desc, unit="prompt", leave=False):
        ids = model.tokenize_instructions([text])["input_ids"].to(model.device)
        acts.append(model.tl(ids, stop_at_layer=layer)[0].float().cpu())
        tokens.append(ids[0].cpu())
    return PromptActivations(instructions, tokens, acts)


def unit_decoder(sae) -> Tensor:
    """Decoder rows `[d_sae, d_model]` scaled to unit norm (dead all-zero rows stay zero)."""
    w = sae.W_dec.detach().float().cpu()
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def encode(sae, x: Tensor, batch_size: int = 4096) -> Tensor:
    """Latent activations `[n, d_sae]` of raw activations `x` `[n, d_model]`."""
    return torch.cat(list(encode_batches(sae, x, batch_size)))


@torch.no_grad()
def reconstruct(sae, x: Tensor, batch_size: int = 4096) -> Tensor:
    """`decode(encode(x))` in the model's units, `[n, d_model]`."""
    return torch.cat([sae.decode(sae.encode(on_sae(sae, x[b:b + batch_size]))).float().cpu()
                      for b in range(0, len(x), batch_size)])


def cosine(a: Tensor, b: Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def relative_mse(estimate: Tensor, target: Tensor) -> float:
    """||estimate - target||² / ||target||²."""
    return ((estimate.double() - target.double()).pow(2).sum() / target.double().pow(2).sum()).item()


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """1 - SSE / total variance of the centred activations."""
    x, x_hat = x.double(), x_hat.double()
    return 1 - ((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


def faithfulness(harmful: Tensor, harmless: Tensor, harmful_hat: Tensor, harmless_hat: Tensor) -> dict[str, float]:
    """Cosine and relative MSE of the reconstructed difference of means against the true one."""
    r = harmful.double().mean(0) - harmless.double().mean(0)
    r_hat = harmful_hat.double().mean(0) - harmless_hat.double().mean(0)
    return {"cosine": cosine(r_hat, r), "relative_mse": relative_mse(r_hat, r)}


def percentile_interval(values: Tensor, level: float = 0.95) -> list[float]:
    lo, hi = torch.quantile(values.double(), torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return [lo.item(), hi.item()]


def bootstrap_faithfulness(harmful: Tensor, harmless: Tensor, recon: dict[str, tuple[Tensor, Tensor]],
                           n_resamples: int = 1000, seed: int = 0,
                           point: dict[str, dict[str, float]] | None = None) -> dict:
    """Point estimates and 95% percentile-bootstrap intervals over prompts (harmful and harmless resampled
    independently, with replacement), paired: every SAE sees the same resample, so the differences between
    SAEs get intervals of their own. `recon[name] = (harmful_hat, harmless_hat)`. `point[name]` (cosine,
    relative_mse), when given, replaces the computed point estimates (and so the differences' estimates),
    e.g. a learner's own; the intervals are always the bootstrap's."""
    names = list(recon)
    if point is not None:
        for n in names:
            if set(point.get(n, {})) != {"cosine", "relative_mse"}:
                raise ValueError(f"point[{n!r}] has {sorted(point.get(n, {}))}; give exactly ['cosine', 'relative_mse']")
    g = torch.Generator().manual_seed(seed)
    samples = {n: {"cosine": [], "relative_mse": []} for n in names}
    for _ in range(n_resamples):
        i = torch.randint(len(harmful), (len(harmful),), generator=g)
        j = torch.randint(len(harmless), (len(harmless),), generator=g)
        for n in names:
            f = faithfulness(harmful[i], harmless[j], recon[n][0][i], recon[n][1][j])
            for k, v in f.items():
                samples[n][k].append(v)
    out: dict = {"n_harmful": len(harmful), "n_harmless": len(harmless), "n_resamples": n_resamples, "saes": {},
                 "differences": {}}
    for n in names:
        point_n = (faithfulness(harmful, harmless, *recon[n]) if point is None
                   else {k: float(v) for k, v in point[n].items()})
        out["saes"][n] = {k: {"estimate": point_n[k], "ci95": percentile_interval(torch.tensor(samples[n][k]))}
                          for k in point_n}
    for a in names:
        for b in names:
            if a < b:
                out["differences"][f"{a} - {b}"] = {
                    k: {"estimate": out["saes"][a][k]["estimate"] - out["saes"][b][k]["estimate"],
                        "ci95": percentile_interval(torch.tensor(samples[a][k]) - torch.tensor(samples[b][k]))}
                    for k in ("cosine", "relative_mse")}
    return out


def null_faithfulness(acts: Tensor, recon: dict[str, Tensor], n_splits: int = 20, seed: int = 0) -> dict:
    """Faithfulness of each SAE for the difference of means between two random halves of `acts` (one side's
    prompts): a direction that is about the prompts' format and content, not refusal. Mean and standard
    deviation over `n_splits` random splits; `recon[name]` is the reconstruction of `acts`."""
    g = torch.Generator().manual_seed(seed)
    vals = {n: {"cosine": [], "relative_mse": []} for n in recon}
    for _ in range(n_splits):
        perm = torch.randperm(len(acts), generator=g)
        a, b = perm[: len(acts) // 2], perm[len(acts) // 2:]
        for n, rec in recon.items():
            for k, v in faithfulness(acts[a], acts[b], rec[a], rec[b]).items():
                vals[n][k].append(v)
    return {n: {k: {"mean": float(torch.tensor(v).mean()), "sd": float(torch.tensor(v).std()), "n_splits": n_splits}
                for k, v in d.items()} for n, d in vals.items()}


def split_half_cosine(harmful: Tensor, harmless: Tensor, n_splits: int = 20, seed: int = 0) -> dict[str, float]:
    """How much signal a set of prompts carries: r from one random half of each side against r from the other
    half, cosine averaged over `n_splits` splits (mean, sd). Near 1: r is stable; near 0: mostly noise."""
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(n_splits):
        a, b = torch.randperm(len(harmful), generator=g), torch.randperm(len(harmless), generator=g)
        ha, hb = a[: len(a) // 2], a[len(a) // 2:]
        la, lb = b[: len(b) // 2], b[len(b) // 2:]
        vals.append(cosine(harmful[ha].double().mean(0) - harmless[la].double().mean(0),
                           harmful[hb].double().mean(0) - harmless[lb].double().mean(0)))
    v = torch.tensor(vals)
    return {"mean": v.mean().item(), "sd": v.std().item(), "n_splits": n_splits}


def protocol_summary(saes: dict, harmful: Tensor, harmless: Tensor, n_resamples: int = 1000, seed: int = 0,
                     ks: list[int] | None = None, harmless_texts: list[str] | None = None,
                     pair: tuple[str, str] | None = None) -> dict:
    """Kissane et al.'s decomposition of one prompt set under one template, for every SAE: ‖r‖, the split-half
    cosine of r, the bootstrap faithfulness (cosine and relative MSE of r̂ with intervals, paired differences) and
    the max decoder cosine with r. `harmful`/`harmless`: `[n, d_model]` activations at the SAE's hook.
    With `ks`, also the sparsity curves (both rankings, least squares and their Adam fit: `sparsity_curve`) and
    the smallest k for relative MSE ≤ 0.5 under each; with `harmless_texts` and `pair` (the webtext-side SAE, the
    chat SAE), the style control (`style_control`) of the chat SAE's edge."""
    recon = {name: (reconstruct(sae, harmful), reconstruct(sae, harmless)) for name, sae in saes.items()}
    r = harmful.double().mean(0) - harmless.double().mean(0)
    out = {"n_harmful": len(harmful), "n_harmless": len(harmless), "r_norm": r.norm().item(),
           "split_half_cosine": split_half_cosine(harmful, harmless, seed=seed),
           "faithfulness": bootstrap_faithfulness(harmful, harmless, recon, n_resamples=n_resamples, seed=seed),
           "max_decoder_cosine": {}}
    for name, sae in saes.items():
        cos = unit_decoder(sae).double() @ (r / r.norm())
        out["max_decoder_cosine"][name] = {"latent": int(cos.argmax()), "cosine": cos.max().item()}
    if ks:
        out["sparsity"] = {name: sparsity_curve(sae, r, delta_activation(encode(sae, harmful), encode(sae, harmless)),
                                                [k for k in ks if k <= sae.cfg.d_sae])
                           for name, sae in saes.items()}
        out["smallest_k"] = {name: {f"k for rel. MSE ≤ 0.5 ({how})": smallest_k(c["k"], c[key], 0.5)
                                    for how, key in SPARSITY_RANKINGS.items()} for name, c in out["sparsity"].items()}
    if harmless_texts is not None and pair is not None and all(n in saes for n in pair):
        # `pair` is (the webtext-side SAE, the chat SAE), as `config.paper_pair` gives it; the control asks about the
        # chat SAE's edge, so it is oriented chat first, as notebook 04's category control is
        out["style_control"] = style_control(harmful, harmless, harmless_texts, recon, (pair[1], pair[0]),
                                             n_resamples, seed)
    return out


# how each sparsity column ranks and fits (keys of `sparsity_curve`'s result)
SPARSITY_RANKINGS = {"top Δ, least squares": "top_delta", "Kissane et al.'s |Δf|·‖d‖, least squares": "kissane_lstsq",
                     "Kissane et al.'s |Δf|·‖d‖, Adam": "kissane_adam", "matching pursuit": "omp"}


def protocol_grid(model: LoadedModel, saes: dict, prompt_sets: dict[str, dict[str, list[str]]],
                  templates: dict[str, str | None], hook_name: str, position: int = -1, n_resamples: int = 1000,
                  seed: int = 0, full_sets: tuple[str, ...] = (), ks: list[int] | None = None,
                  pair: tuple[str, str] | None = None) -> dict[str, dict]:
    """`protocol_summary` for every prompt set (`{"harmful": [...], "harmless": [...]}`) under every chat template
    (`{name: system_prompt}`: None = no system turn, "default" = the tokenizer's), keyed "<set> · <template>". The
    sets in `full_sets` also get the sparsity curves at `ks` and the style control for `pair`."""
    from dataclasses import replace

    out = {}
    for set_name, prompts in prompt_sets.items():
        full = set_name in full_sets
        for t_name, system_prompt in templates.items():
            view = replace(model, system_prompt=system_prompt)  # the same weights, another chat template
            acts = {side: prompt_activations(view, prompts[side], hook_name, f"{set_name}, {t_name}: {side}").at(position)
                    for side in ("harmful", "harmless")}
            out[f"{set_name} · {t_name}"] = protocol_summary(
                saes, acts["harmful"], acts["harmless"], n_resamples, seed, ks=ks if full else None,
                harmless_texts=prompts["harmless"] if full else None, pair=pair if full else None)
    return out


def group_difference(x: Tensor, group: Tensor) -> Tensor:
    """Mean of the rows in `group` minus the mean of the others: a difference of means of the same kind as r
    (two sets of prompts), between two groups of categories of one side."""
    return x[group].double().mean(0) - x[~group].double().mean(0)


def edge_control(harmful: Tensor, harmless: Tensor, recon: dict[str, tuple[Tensor, Tensor]],
                 controls: dict[str, tuple[str, Tensor]], pair: tuple[str, str], n_resamples: int = 1000,
                 seed: int = 0) -> dict:
    """Is an SAE's edge on r about refusal, or about directions of that kind in general? Each control direction is
    the difference of means between two groups of prompts within one side (`controls`: name -> (side, boolean
    group mask over that side's prompts)): the same kind of direction as r, with no refusal in it. For
    `pair = (a, b)` (say chat, webtext): edge(d) = cos(r̂_a, d) − cos(r̂_b, d) reconstructing direction d; the
    quantity of interest is edge(r) − edge(control), with a paired percentile-bootstrap interval (prompts resampled
    within each side, the groups following their prompts). Also each SAE's cosine on each direction."""
    a, b = pair

    def control(side: str, mask: Tensor):
        return lambda h, hl, i, j: group_difference(h[i], mask[i]) if side == "harmful" else group_difference(hl[j], mask[j])

    dirs = {"r": lambda h, hl, i, j: (h[i].double().mean(0) - hl[j].double().mean(0)),
            **{name: control(side, mask) for name, (side, mask) in controls.items()}}

    def cosines(i, j):
        out = {}
        for d, f in dirs.items():
            true = f(harmful, harmless, i, j)
            out[d] = {n: cosine(f(recon[n][0], recon[n][1], i, j), true) for n in recon}
        return out

    def degenerate(i, j) -> bool:  # a resample with an empty group has no control direction
        return any(m[i if side == "harmful" else j].all() or not m[i if side == "harmful" else j].any()
                   for side, m in controls.values())

    every = torch.arange(len(harmful)), torch.arange(len(harmless))
    point = cosines(*every)
    g = torch.Generator().manual_seed(seed)
    samples = {d: {"edge": [], "edge_r_minus_edge": []} for d in dirs}
    for _ in range(n_resamples):
        i = torch.randint(len(harmful), (len(harmful),), generator=g)
        j = torch.randint(len(harmless), (len(harmless),), generator=g)
        if degenerate(i, j):
            continue
        c = cosines(i, j)
        edge_r = c["r"][a] - c["r"][b]
        for d in dirs:
            edge = c[d][a] - c[d][b]
            samples[d]["edge"].append(edge)
            samples[d]["edge_r_minus_edge"].append(edge_r - edge)
    out = {"pair": list(pair), "n_harmful": len(harmful), "n_harmless": len(harmless),
           "n_resamples": len(samples["r"]["edge"]), "directions": {}}
    for d in dirs:
        edge = point[d][a] - point[d][b]
        out["directions"][d] = {
            "cosine": point[d], "edge": {"estimate": edge, "ci95": percentile_interval(torch.tensor(samples[d]["edge"]))},
            "edge_r_minus_edge": {"estimate": point["r"][a] - point["r"][b] - edge,
                                  "ci95": percentile_interval(torch.tensor(samples[d]["edge_r_minus_edge"]))}}
    return out


def structured_control(harmful: Tensor, harmless: Tensor, recon: dict[str, tuple[Tensor, Tensor]],
                       harmful_group: Tensor, harmless_group: Tensor, pair: tuple[str, str],
                       n_resamples: int = 1000, seed: int = 0) -> dict:
    """`edge_control` with category controls: two groups of categories within each side (harmless A − harmless B,
    harmful A − harmful B)."""
    return edge_control(harmful, harmless, recon, {"harmless categories": ("harmless", harmless_group),
                                                   "harmful categories": ("harmful", harmful_group)},
                        pair, n_resamples, seed)


def style_control(harmful: Tensor, harmless: Tensor, harmless_texts: list[str], recon: dict[str, tuple[Tensor, Tensor]],
                  pair: tuple[str, str], n_resamples: int = 1000, seed: int = 0, min_group: int = 4) -> dict | None:
    """A control that fits Kissane et al.'s protocol, whose harmful side (AdvBench) has no categories: a style
    direction inside the harmless side, questions ("…?") minus imperatives, through `edge_control`, with its norm
    and split-half cosine beside r's so that its noise share is comparable. None when a group has fewer than
    `min_group` prompts."""
    question = torch.tensor([t.rstrip().endswith("?") for t in harmless_texts])
    if min(int(question.sum()), int((~question).sum())) < min_group:
        return None
    out = edge_control(harmful, harmless, recon, {"harmless style (question − imperative)": ("harmless", question)},
                       pair, n_resamples, seed)
    style = group_difference(harmless, question)
    r = harmful.double().mean(0) - harmless.double().mean(0)
    out["norms"] = {"r": r.norm().item(), "style": style.norm().item()}
    out["split_half_cosine"] = {"r": split_half_cosine(harmful, harmless, seed=seed),
                                "style": split_half_cosine(harmless[question], harmless[~question], seed=seed)}
    out["n_question"], out["n_imperative"] = int(question.sum()), int((~question).sum())
    return out


def control_verdict(control: dict) -> str:
    """One sentence on what the structured control's intervals support."""
    a, b = control["pair"]
    parts = []
    for d in (d for d in control["directions"] if d != "r"):
        lo, hi = control["directions"][d]["edge_r_minus_edge"]["ci95"]
        if lo > 0:
            parts.append(f"larger on r than on the {d} control (difference of edges [{lo:+.3f}, {hi:+.3f}])")
        elif hi < 0:
            parts.append(f"smaller on r than on the {d} control ([{lo:+.3f}, {hi:+.3f}])")
        else:
            parts.append(f"not distinguishable from its edge on the {d} control ([{lo:+.3f}, {hi:+.3f}] contains 0)")
    return f"The {a} SAE's edge over the {b} SAE is " + "; and ".join(parts) + "."


def least_squares_relative_mse(atoms: Tensor, target: Tensor) -> float:
    """Relative MSE of the exact least-squares fit Σ cᵢ atomᵢ ≈ target (`atoms` `[k, d]`): the optimum that
    Kissane et al.'s Adam loop over coefficients approaches."""
    if len(atoms) == 0:
        return 1.0
    a = atoms.double().T  # [d, k]
    coef = torch.linalg.lstsq(a, target.double()[:, None]).solution
    return relative_mse((a @ coef)[:, 0], target)


def adam_relative_mse(atoms: Tensor, target: Tensor, iterations: int = 1000, lr: float = 0.01, seed: int = 0) -> float:
    """Kissane et al.'s own fit (their sparsity code): coefficients initialised from a standard normal, Adam on the
    mean squared error of Σ cᵢ atomᵢ against `target` for `iterations` steps; the relative MSE at the end. Exact
    least squares (`least_squares_relative_mse`) is the optimum it approaches."""
    if len(atoms) == 0:
        return 1.0
    a, t = atoms.detach().float(), target.detach().float()
    g = torch.Generator().manual_seed(seed)
    coef = torch.randn(len(a), generator=g).requires_grad_(True)
    opt = torch.optim.Adam([coef], lr=lr)
    with torch.enable_grad():
        for _ in range(iterations):
            loss = ((coef[:, None] * a).sum(0) - t).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return relative_mse((coef.detach()[:, None] * a).sum(0), t)


def kissane_ranking(sae, delta: Tensor) -> Tensor:
    """Latents in Kissane et al.'s order: by |Δ activation| of the SAE with its decoder norms folded into the encoder,
    i.e. |Δfᵢ|·‖dᵢ‖ for an SAE whose decoder rows are not unit norm (the same as |Δfᵢ| when they are)."""
    norms = sae.W_dec.detach().double().norm(dim=-1).cpu()
    return (delta.double().abs() * norms).argsort(descending=True)


def omp(decoder: Tensor, target: Tensor, k_max: int) -> tuple[list[int], list[float]]:
    """Orthogonal matching pursuit over unit decoder rows: at each step add the row most correlated with the
    residual and refit all chosen rows by least squares. Returns the chosen latents in order and the relative
    MSE after each step (a greedy estimate of the best that k latents can do)."""
    d = decoder.double()
    t = target.double()
    chosen: list[int] = []
    errors: list[float] = []
    residual = t.clone()
    for _ in range(min(k_max, len(d))):
        scores = (d @ residual).abs()
        if chosen:
            scores[chosen] = -1
        chosen.append(int(scores.argmax()))
        a = d[chosen].T
        coef = torch.linalg.lstsq(a, t[:, None]).solution
        residual = t - (a @ coef)[:, 0]
        errors.append((residual.pow(2).sum() / t.pow(2).sum()).item())
    return chosen, errors


def delta_activation(f_harmful: Tensor, f_harmless: Tensor) -> Tensor:
    """Mean latent activation on harmful minus harmless prompts, `[d_sae]`."""
    return f_harmful.double().mean(0) - f_harmless.double().mean(0)


def sparsity_curve(sae, target: Tensor, delta: Tensor, ks: list[int], adam_iterations: int = 1000) -> dict:
    """Relative MSE of fitting `target` with k unit decoder rows, four ways: the top-k latents by |Δ activation|
    with exact least squares (`top_delta`); Kissane et al.'s procedure, the top-k by |Δf|·‖d‖ (`kissane_ranking`)
    with their Adam fit (`kissane_adam`) and with exact least squares (`kissane_lstsq`); and orthogonal matching
    pursuit over every row (`omp`, a greedy estimate of the best k latents can do)."""
    pause_point("sparsity_curve")
    dec = unit_decoder(sae)
    order = delta.abs().argsort(descending=True)
    theirs = kissane_ranking(sae, delta)
    by_delta = [least_squares_relative_mse(dec[order[:k]], target) for k in ks]
    chosen, errors = omp(dec, target, max(ks))
    return {"k": ks, "top_delta": by_delta, "omp": [errors[k - 1] for k in ks], "omp_latents": chosen[:16],
            "top_delta_latents": order[:16].tolist(),
            "kissane_lstsq": [least_squares_relative_mse(dec[theirs[:k]], target) for k in ks],
            "kissane_adam": [adam_relative_mse(dec[theirs[:k]], target, iterations=adam_iterations) for k in ks],
            "kissane_latents": theirs[:16].tolist()}


def smallest_k(ks: list[int], errors: list[float], threshold: float) -> int | None:
    """The first k whose relative MSE is at most `threshold` (None if none)."""
    return next((k for k, e in zip(ks, errors) if e <= threshold), None)


def firing_frequency(f: Tensor) -> Tensor:
    """Share of rows on which each latent is active, `[d_sae]`."""
    return (f > 0).double().mean(0)


@torch.no_grad()
def heldout_frequency(sae, acts: Tensor, batch_size: int = 4096) -> Tensor:
    """Firing frequency of every latent on cached activations (without holding all latents in memory)."""
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    for f in encode_batches(sae, acts, batch_size):
        fired += (f > 0).double().sum(0)
    return fired / len(acts)


def latent_table(sae, r: Tensor, delta: Tensor, freqs: dict[str, Tensor], by: str, top: int = 10) -> list[dict]:
    """The top latents by decoder cosine with r (`by="cosine"`) or by |Δ activation| (`by="delta"`), each with
    its cosine, Δ activation and firing frequencies."""
    cos = unit_decoder(sae).double() @ (r.double() / r.double().norm())
    key = cos if by == "cosine" else delta.abs()
    if by not in ("cosine", "delta"):
        raise ValueError(f"by must be 'cosine' or 'delta', got {by!r}.")
    rows = []
    for latent in key.argsort(descending=True)[:top].tolist():
        rows.append({"latent": latent, "cosine": cos[latent].item(), "delta_activation": delta[latent].item(),
                     **{f"freq_{k}": v[latent].item() for k, v in freqs.items()}})
    return rows


@torch.no_grad()
def prompt_examples(sae, prompts: PromptActivations, tokenizer, latent: int, k: int = 5,
                    outlier_factor: float | None = 10.0) -> list[dict]:
    """The k prompt tokens where `latent` fires most, with the prompt text around the token. Like the SAE's
    training data, the first token and tokens with norm > `outlier_factor` x the prompt's median norm (massive
    activations, e.g. the first token of the system turn) are left out."""
    best = []
    for i, (toks, acts) in enumerate(zip(prompts.tokens, prompts.acts)):
        f = encode(sae, acts)[:, latent]
        f[0] = 0
        if outlier_factor is not None:
            norms = acts.norm(dim=-1)
            f[norms > outlier_factor * norms[1:].median()] = 0
        t = int(f.argmax())
        best.append((f[t].item(), i, t))
    rows = []
    for v, i, t in sorted(best, reverse=True)[:k]:
        if v <= 0:
            break
        toks = prompts.tokens[i]
        rows.append({"activation": v, "before": tokenizer.decode(toks[max(0, t - 24):t].tolist()),
                     "token": tokenizer.decode([int(toks[t])]), "after": tokenizer.decode(toks[t + 1:t + 6].tolist())})
    return rows


def logit_effects(direction: Tensor, W_U: Tensor, tokenizer, k: int = 10) -> dict[str, list[str]]:
    """Tokens a unit direction promotes and suppresses through the unembedding (no final norm: the direct
    path, as in SAE dashboards)."""
    logits = direction.float() @ W_U.float().cpu()
    top, bottom = logits.topk(k).indices.tolist(), (-logits).topk(k).indices.tolist()
    return {"promotes": [tokenizer.decode([t]) for t in top], "suppresses": [tokenizer.decode([t]) for t in bottom]}


def _svg_histogram(values: Tensor, width: int = 360, height: int = 90, bins: int = 30) -> str:
    v = values[values > 0].double()
    if len(v) == 0:
        return "<p>never fires</p>"
    counts = torch.histc(v, bins=bins, min=0, max=v.max().item())
    scale = height / max(counts.max().item(), 1)
    bw = width / bins
    bars = "".join(f'<rect x="{i * bw:.1f}" y="{height - c * scale:.1f}" width="{bw - 1:.1f}" '
                   f'height="{c * scale:.1f}" fill="#4c78a8"><title>{int(c)}</title></rect>'
                   for i, c in enumerate(counts.tolist()))
    return (f'<svg width="{width}" height="{height + 14}" role="img"><g>{bars}</g>'
            f'<text x="0" y="{height + 12}" font-size="10">0</text>'
            f'<text x="{width - 40}" y="{height + 12}" font-size="10">{v.max().item():.1f}</text></svg>')


def _rows_html(rows: list[dict]) -> str:
    if not rows:
        return "<p><i>no activation</i></p>"
    items = "".join(f"<li><code>{r['activation']:.2f}</code> {html.escape(r['before'])}<mark><b>"
                    f"{html.escape(r['token'])}</b></mark>{html.escape(r.get('after', ''))}</li>" for r in rows)
    return f"<ul>{items}</ul>"


def latent_dashboard_html(title: str, latents: list[dict]) -> str:
    """One self-contained page (no scripts, no network) in the spirit of SAEDashboard. Each entry of `latents`:
    latent, cosine, delta_activation, frequencies, examples {source: rows}, histogram (activations),
    promotes, suppresses."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:auto}section{border:1px solid #ccc;padding:8px;"
             "margin:12px 0}mark{background:#ffd54f}li{font-family:monospace;white-space:pre-wrap;margin:2px 0}"
             ".cols{display:flex;gap:16px;flex-wrap:wrap}.cols>div{flex:1;min-width:320px}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for e in latents:
        freqs = ", ".join(f"{k}: {v:.2%}" for k, v in e["frequencies"].items())
        parts.append(f"<section><h2>latent {e['latent']}</h2><p>cosine with r: <b>{e['cosine']:.3f}</b>; "
                     f"Δ activation (harmful − harmless): {e['delta_activation']:.3f}; firing frequency: {freqs}</p>")
        parts.append(f"<p>promotes: <code>{html.escape(' | '.join(e['promotes']))}</code><br>suppresses: "
                     f"<code>{html.escape(' | '.join(e['suppresses']))}</code></p>")
        parts.append(f"<p>activation histogram (held-out tokens where it fires):</p>{_svg_histogram(e['histogram'])}")
        parts.append("<div class='cols'>" + "".join(f"<div><h3>{html.escape(src)}</h3>{_rows_html(rows)}</div>"
                                                   for src, rows in e["examples"].items()) + "</div></section>")
    parts.append("</body></html>")
    return "\n".join(parts)




def load_direction(run_dir) -> tuple[Tensor, dict, Tensor]:
    """Notebook 03's selected direction, its metadata and the candidate `mean_diffs` (a clear error names
    notebook 03 when they are missing)."""
    import json
    from pathlib import Path

    folder = Path(run_dir) / "refusal_direction"
    files = [folder / "direction.pt", folder / "direction.json", folder / "mean_diffs.pt"]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"Missing {missing}: run notebook 03 (03_refusal_direction) for this preset first.")
    return (torch.load(files[0], map_location="cpu"), json.loads(files[1].read_text()),
            torch.load(files[2], map_location="cpu"))


def sae_folders(run_dir, names: list[str] | None = None) -> dict:
    """The saved SAE folders `runs/<preset>/saes/<name>/` (all of them, or `names`), by name. A name may also be
    one of the scale study's SAEs (`runs/<preset>/scale_study/saes/<point>_<corpus>/`, e.g. "w8192_u1600000_chat")."""
    from pathlib import Path

    def saved(root: Path) -> dict:
        return {p.name: p for p in sorted(root.glob("*")) if (p / "cfg.json").exists()} if root.is_dir() else {}

    root = Path(run_dir) / "saes"
    found = saved(root)
    if not found:
        raise FileNotFoundError(f"No SAEs under {root}: run notebook 02 (02_train_saes) for this preset first.")
    if names is None:
        return found
    study = saved(Path(run_dir) / "scale_study" / "saes")
    unknown = [n for n in names if n not in found and n not in study]
    if unknown:
        extra = f" (scale study: {sorted(study)})" if study else ""
        raise FileNotFoundError(f"No SAE named {unknown} under {root}; there are {sorted(found)}{extra}.")
    return {n: found.get(n) or study[n] for n in names}


@torch.no_grad()
def outlier_tokens(model: LoadedModel, windows: list[list[int]], hook_name: str, factor: float,
                   batch_size: int = 8) -> dict:
    """Which tokens notebook 01's outlier filter (norm > factor x the batch median, first position aside) drops
    on these windows: counts by token, the share dropped, and the median norm."""
    from collections import Counter

    from helpers.activations import hook_layer, training_token_mask

    layer = hook_layer(hook_name, model.n_layers, model.name)
    dropped: Counter = Counter()
    kept_total, medians = 0, []
    for b in range(0, len(windows), batch_size):
        ids = torch.tensor(windows[b:b + batch_size], device=model.device)
        norms = model.tl(ids, stop_at_layer=layer).norm(dim=-1)
        keep, out = training_token_mask(norms, drop_first=True, outlier_factor=factor)
        medians.append(norms[:, 1:].median().item())
        kept_total += int((keep | out).sum())
        dropped.update(model.tokenizer.convert_ids_to_tokens(ids[out].tolist()))
    return {"dropped": dict(dropped.most_common()), "share": sum(dropped.values()) / max(kept_total, 1),
            "median_norm": sum(medians) / len(medians)}


BASE_PREFIX = "base_"  # notebook 02 names the base model's per-corpus SAEs base_<corpus>


def model_by_data(saes: dict, values: dict[str, float]) -> dict[str, dict[str, float]] | None:
    """Kissane et al.'s dataset-versus-model grid: `{model: {training data: value}}` over the per-corpus standard
    SAEs (not the mixture or TopK variants), the model read from each SAE's metadata and the data from its name
    (`chat`, `base_chat`, ...). None when the SAEs come from fewer than two models."""
    grid: dict[str, dict[str, float]] = {}
    for name, sae in saes.items():
        data = name.removeprefix(BASE_PREFIX)
        if name == "mixture" or data.endswith("_topk") or name not in values:
            continue
        grid.setdefault(canonical_model_name(sae.cfg.metadata.model_name), {})[data] = values[name]
    return grid if len(grid) >= 2 else None


def canonical_model_name(name: str | None) -> str:
    """One spelling per model: the hub name's last part, lower-cased ("Qwen/Qwen1.5-0.5B-Chat" and TransformerLens'
    "qwen1.5-0.5b-chat" are the same model)."""
    return str(name).rsplit("/", 1)[-1].lower()
