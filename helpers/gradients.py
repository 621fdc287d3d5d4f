"""Refusal gradients read through SAE decoders (Lee, Breck & Arditi 2025, notebook 06).

R = ⟨resid_pre at target layer L, last prompt token, r̂_L⟩, with r̂_L the normalised difference of means at L
and notebook 03's selected position. Its gradient with respect to the source-layer residual (the SAE's hook)
at every prompt position, dotted with each latent's unit decoder row, scores the latents:

- `mean`  (the published description): mean over positions of d̂ₖ · g_t;
- `sum`: Σ_t d̂ₖ · g_t, the first-order change of R when d̂ₖ is added at every prompt position;
- `last`: d̂ₖ · g_T at the last token only;
- `cosine`: mean over positions of cos(d̂ₖ, g_t);
- `attribution`: Σ_t f_k(x_t) (W_dec[k] · g_t), activation × gradient: the first-order change of R when the
  latent is switched off at every position (prompt-specific by construction);
- any rule with `r_orthogonal=True` first removes r̂ (at the source layer) from the gradient, i.e. scores the
  part of dₖ orthogonal to the refusal direction: a variant that notebook 06 shows beside the published plain
  reading (its main one), asking what pushes R other than the refusal component every prompt shares.

The target layer L is notebook 03's selected layer when it lies above the source (notebook 06's `TARGET_LAYER`);
the most separating layer is a sensitivity row. Choices where the method is unpublished are marked in notebook 06.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from helpers.decomposition import unit_decoder
from helpers.files import pause_point
from helpers.hooks import Intervention
from helpers.models import LoadedModel, position_ids
from helpers.saes import on_sae

RULES = ("mean", "sum", "last", "cosine", "attribution")


@dataclass
class RefusalGradient:
    """One prompt's refusal gradient at the source layer."""

    instruction: str
    tokens: list[str]
    source_acts: Tensor  # [T, d_model] residual at the source layer
    grad: Tensor  # [T, d_model] dR / d resid_source
    R: float  # the projection itself
    source_layer: int
    target_layer: int

    def __post_init__(self) -> None:
        """A gradient that is not finite (a zero source residual before RMSNorm, an overflow) would be ranked
        silently downstream: it fails here, whichever code took it."""
        if not torch.isfinite(self.grad).all():
            bad = (~torch.isfinite(self.grad)).any(-1).nonzero()[:, 0].tolist()
            norms = [round(self.source_acts[i].norm().item(), 3) for i in bad[:5]]
            raise FloatingPointError(
                f"the refusal gradient of {self.instruction[:40]!r} is not finite at positions {bad[:5]} (source "
                f"residual norms {norms}; a norm of 0 makes the next RMSNorm's gradient blow up): pick another "
                "source_layer, or check the model's embedding of those tokens.")


def layer_map(model: LoadedModel, instruction: str, source_layer: int, target_layer: int
              ) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """One chat-formatted prompt (no padding) as a differentiable map between two layers: its residual
    `blocks.{source_layer}.hook_resid_pre` `[T, d_model]` and the function sending any such residual to
    `blocks.{target_layer}.hook_resid_pre` `[T, d_model]` (the rest of the prompt, tokens and positions, fixed)."""
    model.check_layer(source_layer)
    model.check_layer(target_layer)
    if target_layer <= source_layer:
        raise ValueError(f"target_layer ({target_layer}) must come after source_layer ({source_layer}).")
    ids = model.tokenize_instructions([instruction])["input_ids"].to(model.device)
    with torch.no_grad():
        source = model.tl(ids, stop_at_layer=source_layer)[0]

    def forward(x: Tensor) -> Tensor:
        def replace(acts: Tensor, hook) -> Tensor:
            return x.to(acts.device, acts.dtype)[None]

        with model.tl.hooks(fwd_hooks=[(f"blocks.{source_layer}.hook_resid_pre", replace)]):
            return model.tl(ids, stop_at_layer=target_layer)[0]

    return source, forward


def projection_gradient(forward: Callable[[Tensor], Tensor], resid: Tensor, direction: Tensor) -> tuple[Tensor, float]:
    """∇ₓ R at x = `resid` `[T, d]`, R = r̂ · forward(x)[-1] (the last token's target residual on the unit
    `direction`): the gradient `[T, d]` and R."""
    x = resid.detach().float().requires_grad_(True)
    r_hat = (direction / direction.norm()).float()
    with torch.enable_grad():
        R = forward(x)[-1].float() @ r_hat.to(x.device)
        (grad,) = torch.autograd.grad(R, x)
    return grad, R.item()


def refusal_gradient(model: LoadedModel, instruction: str, source_layer: int, target_layer: int,
                     r_target: Tensor) -> RefusalGradient:
    """∇ R with respect to `blocks.{source_layer}.hook_resid_pre` at every position of one chat-formatted prompt
    (no padding), R the projection of `blocks.{target_layer}.hook_resid_pre` at the last token on r̂_target."""
    pause_point("refusal_gradient")
    source, forward = layer_map(model, instruction, source_layer, target_layer)
    grad, R = projection_gradient(forward, source, r_target.to(model.device))
    ids = model.tokenize_instructions([instruction])["input_ids"]
    return RefusalGradient(instruction=instruction, tokens=model.tokenizer.convert_ids_to_tokens(ids[0].tolist()),
                           source_acts=source.detach().float().cpu(), grad=grad.float().cpu(), R=R,
                           source_layer=source_layer, target_layer=target_layer)


def instruction_positions(model: LoadedModel, instruction: str) -> Tensor:
    """Indices of the tokens that spell `instruction` itself in its chat-formatted prompt (as `refusal_gradient`
    tokenizes it): not the system turn, not the template's tokens, which every prompt shares."""
    text = model.format_chat(instruction)
    start = text.rfind(instruction)
    if start < 0:
        raise ValueError(f"the chat template does not contain the instruction verbatim: {instruction!r}")
    enc = model.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    ids = model.tokenize_instructions([instruction])["input_ids"][0].tolist()
    if enc["input_ids"] != ids:
        raise ValueError("the tokenizer's offsets do not describe the prompt refusal_gradient uses "
                         "(special tokens added?); instruction positions cannot be located.")
    end = start + len(instruction)
    pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start]
    return torch.tensor(pos, dtype=torch.long)


def latent_scores(sae, g: RefusalGradient, rule: str = "mean", r_source: Tensor | None = None,
                  positions: Tensor | None = None) -> Tensor:
    """Each latent's score `[d_sae]` under `rule` (see the module docstring). With `r_source` given, its
    direction is removed from the gradient first (the r-orthogonal reading). With `positions` (e.g.
    `instruction_positions`), only those prompt positions count (`last` still reads the last token)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
    grad = g.grad.double().cpu()  # scores are computed on the CPU, where unit_decoder puts the decoder
    acts = g.source_acts
    if positions is not None and rule != "last":
        if len(positions) == 0:
            raise ValueError("positions is empty: no prompt position to score.")
        grad, acts = grad[positions], acts[positions]
    if r_source is not None:
        r_hat = (r_source / r_source.norm()).double().cpu()
        grad = grad - (grad @ r_hat)[:, None] * r_hat
    if rule == "attribution":
        f = sae.encode(on_sae(sae, acts)).detach().double().cpu()  # [T, d_sae]
        return (f * (grad @ sae.W_dec.detach().double().cpu().T)).sum(0)
    dec = unit_decoder(sae).double()  # [d_sae, d]
    if rule == "last":
        return dec @ grad[-1]
    per_position = grad @ dec.T  # [T, d_sae]
    if rule == "sum":
        return per_position.sum(0)
    if rule == "mean":
        return per_position.mean(0)
    norms = grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (per_position / norms).mean(0)  # cosine: decoder rows are unit norm


def top_latents(scores: Tensor, k: int = 10) -> dict[str, list[tuple[int, float]]]:
    """The k most positive and k most negative latents with their scores."""
    pos = scores.topk(k)
    neg = (-scores).topk(k)
    return {"positive": [(int(i), float(v)) for v, i in zip(pos.values, pos.indices)],
            "negative": [(int(i), -float(v)) for v, i in zip(neg.values, neg.indices)]}


def overlap_at_k(a: Tensor, b: Tensor, k: int = 10) -> float:
    """Share of the top-k latents (by score) that two score vectors have in common."""
    return len(set(a.topk(k).indices.tolist()) & set(b.topk(k).indices.tolist())) / k


def specificity(top_sets: dict[str, list[set[int]]], k: int, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Are the top-k latents specific to a request? `top_sets`: request -> the top-k latent set of each of its
    wordings (paraphrases). `within`: mean top-k overlap between two wordings of the same request; `between`:
    between wordings of different requests; `difference` = within − between, each request weighted once. A
    prompt-specific reading keeps a request's latents when the wording changes (within high) and gives other
    requests other latents (between low); a reading dominated by latents every prompt shares has both high.
    Intervals: 95% percentile bootstrap over requests (each resample recomputes both means on its requests)."""
    import itertools

    import numpy as np

    names = [n for n, sets in top_sets.items() if len(sets) >= 2]
    if len(names) < 2:
        raise ValueError("specificity needs at least two requests with at least two wordings each.")

    def overlap(a: set[int], b: set[int]) -> float:
        return len(a & b) / k

    within = np.array([np.mean([overlap(a, b) for a, b in itertools.combinations(top_sets[n], 2)]) for n in names])
    pair = np.array([[np.mean([overlap(a, b) for a in top_sets[m] for b in top_sets[n]]) if m != n else np.nan
                      for n in names] for m in names])

    def stats(idx: np.ndarray) -> tuple[float, float]:
        sub = pair[np.ix_(idx, idx)]
        off = ~np.eye(len(idx), dtype=bool) & (idx[:, None] != idx[None, :])  # resampled duplicates are one request
        return float(within[idx].mean()), float(np.nanmean(sub[off])) if off.any() else float("nan")

    w, b = stats(np.arange(len(names)))
    rng = np.random.default_rng(seed)
    boots = np.array([stats(rng.integers(0, len(names), len(names))) for _ in range(n_resamples)])
    boots = boots[~np.isnan(boots).any(1)]
    diffs = boots[:, 0] - boots[:, 1]

    def ci(x: np.ndarray) -> list[float]:
        return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))]

    return {"k": k, "n_requests": len(names), "n_wordings": sum(len(top_sets[n]) for n in names),
            "within": {"estimate": w, "ci95": ci(boots[:, 0])}, "between": {"estimate": b, "ci95": ci(boots[:, 1])},
            "difference": {"estimate": w - b, "ci95": ci(diffs)},
            "per_request_within": dict(zip(names, within.tolist()))}


def specificity_grid(model: LoadedModel, saes: dict, requests: dict[str, list[str]], source_layer: int,
                     target_layer: int, r_target: Tensor, templates: dict[str, str | None], rule: str = "mean",
                     r_source: Tensor | None = None, k: int = 10, n_resamples: int = 1000, seed: int = 0,
                     batch_size: int = 8) -> tuple[dict[tuple[str, str, str], dict], dict[str, Tensor]]:
    """Lee et al.'s prompt specificity for every SAE and chat template: each wording of each request
    (`instructions.paraphrases()`) gets its refusal gradient, scored under `rule` over the instruction's own tokens
    (`instruction_positions`) and over every position; `specificity` compares the top-`k` latents within and between
    requests. Returns ({(sae, template, "instruction tokens" | "every position"): specificity}, {template: each
    wording's refusal metric})."""
    from dataclasses import replace

    from helpers.generation import last_token_logits
    from helpers.judges import refusal_metric, refusal_token_ids

    wordings = [w for ws in requests.values() for w in ws]
    refusal_ids = refusal_token_ids(model.tokenizer)
    out, metric = {}, {}
    for t_name, system_prompt in templates.items():
        view = replace(model, system_prompt=system_prompt)  # the same weights, another chat template
        metric[t_name] = refusal_metric(last_token_logits(view, wordings, batch_size=batch_size), refusal_ids)
        grads = {w: refusal_gradient(view, w, source_layer, target_layer, r_target) for w in wordings}
        own = {w: instruction_positions(view, w) for w in wordings}
        for name, sae in saes.items():
            for where in ("instruction tokens", "every position"):
                top = {req: [set(latent_scores(sae, grads[w], rule, r_source,
                                               positions=own[w] if where == "instruction tokens" else None)
                                 .topk(k).indices.tolist()) for w in ws] for req, ws in requests.items()}
                out[(name, t_name, where)] = specificity(top, k, n_resamples, seed)
    return out, metric


def metric_by_kind(requests: dict[str, list[str]], metric: Tensor) -> dict[str, dict[str, float]]:
    """Per kind of request ("<kind>/<request>" keys of `instructions.paraphrases()`): the mean refusal metric over
    its wordings, the share above 0 (the model leans to refuse) and n, from one template's `metric` of
    `specificity_grid` (wordings in the requests' order)."""
    kinds = [req.split("/")[0] for req, ws in requests.items() for _ in ws]
    if len(kinds) != len(metric):
        raise ValueError(f"{len(metric)} metric values for {len(kinds)} wordings: pass specificity_grid's metric.")
    out = {}
    for kind in dict.fromkeys(kinds):
        m = metric[torch.tensor([k == kind for k in kinds])]
        out[kind] = {"mean": m.mean().item(), "positive_share": (m > 0).float().mean().item(), "n": len(m)}
    return out


def specificity_verdict(spec: dict) -> bool:
    """The post's reading holds when a request's top-k latents survive rewording better than they are shared
    with other requests (the difference's interval above 0) and most of them are its own (between below half
    of within)."""
    return spec["difference"]["ci95"][0] > 0 and spec["between"]["estimate"] < spec["within"]["estimate"] / 2


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two score vectors, tied values sharing their average rank
    (`scipy.stats.spearmanr`; attribution scores are mostly exact zeros, so ties matter). NaN when either is
    constant."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()).statistic)


def position_alignment(g: RefusalGradient, direction: Tensor) -> Tensor:
    """d̂ · g_t at each prompt position `[T]`: where in the prompt the gradient aligns with a latent."""
    return g.grad.double() @ (direction / direction.norm()).double()


@torch.no_grad()
def steered_readout(model: LoadedModel, instruction: str, vectors: Tensor, layer: int, target_layer: int,
                    r_target: Tensor, refusal_ids: list[int]) -> tuple[Tensor, Tensor]:
    """For each row v of `vectors` `[B, d_model]`: add v at every prompt position of `blocks.{layer}.hook_resid_pre`
    and read the refusal metric (log-odds of refusal tokens at the last position) and R. One batched pass of B
    copies of the prompt. Returns (metric `[B]`, R `[B]`)."""
    from helpers.judges import refusal_metric

    enc = model.tokenize_instructions([instruction] * len(vectors))
    v = vectors.to(model.device, torch.float32)[:, None, :]
    iv = Intervention(edit=lambda x: x + v.to(x.dtype), edit_layer=layer)
    with model.hooks(iv):
        out = model.hf.model(**enc, position_ids=position_ids(enc["attention_mask"]), output_hidden_states=True)
    logits = model.unembed(out.last_hidden_state[:, -1]).float()
    r_hat = (r_target / r_target.norm()).to(out.hidden_states[target_layer])
    return refusal_metric(logits, refusal_ids).float().cpu(), (out.hidden_states[target_layer][:, -1] @ r_hat).float().cpu()


def generate_steered(model: LoadedModel, prompts: list[str], vectors: Tensor, layer: int, prompt_only: bool,
                     max_new_tokens: int) -> list[str]:
    """Greedy completions of `prompts`, prompt i with row i of `vectors` `[n, d_model]` added at
    `blocks.{layer}.hook_resid_pre` (on the prompt tokens only, or on every token), in one batch."""
    from helpers.generation import _length_sorted, generate

    if len(vectors) != len(prompts):
        raise ValueError(f"one steering vector per prompt: got {len(vectors)} vectors for {len(prompts)} prompts.")
    order = _length_sorted(prompts)  # generate() batches in this order; give it the rows already sorted
    v = vectors[order].float()[:, None, :]
    iv = Intervention(edit=lambda x: x + v.to(x.device, x.dtype), edit_layer=layer, prompt_only=prompt_only)
    out = generate(model, [prompts[i] for i in order], iv, max_new_tokens=max_new_tokens, batch_size=len(prompts),
                   progress=False)
    result = [""] * len(prompts)
    for j, i in enumerate(order):
        result[i] = out[j]
    return result


@torch.no_grad()
def projection_by_layer(model: LoadedModel, instructions: list[str], mean_diffs_at_pos: Tensor,
                        batch_size: int = 16) -> Tensor:
    """R at every layer for each prompt `[n, n_layers]`: the last-token resid_pre projected on the normalised
    difference of means at that layer (`mean_diffs_at_pos` `[n_layers, d_model]`). A layer whose difference of
    means is zero has no direction and gets NaN (layer 0 at a template token every prompt shares: the same
    embedding on both sides)."""
    from helpers.generation import batched

    r_hat = mean_diffs_at_pos.float() / mean_diffs_at_pos.float().norm(dim=-1, keepdim=True)  # 0/0 = NaN there
    out = []
    for batch in batched(instructions, batch_size):
        enc = model.tokenize_instructions(batch)
        hs = model.hf.model(**enc, position_ids=position_ids(enc["attention_mask"]), output_hidden_states=True).hidden_states
        last = torch.stack([h[:, -1].float().cpu() for h in hs[: model.n_layers]], dim=1)  # [b, L, d]
        out.append((last * r_hat[None]).sum(-1))
    return torch.cat(out)


def separation(harmful: Tensor, harmless: Tensor) -> Tensor:
    """Cohen's d per column: (mean harmful − mean harmless) / pooled s.d.; NaN where a column is NaN
    (undefined: see `projection_by_layer`)."""
    pooled = ((harmful.var(0) + harmless.var(0)) / 2).sqrt().clamp_min(1e-12)
    return (harmful.mean(0) - harmless.mean(0)) / pooled
