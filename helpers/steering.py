"""Steering with SAE latents against the true refusal direction (Kissane et al., notebook 05).

Interventions are `helpers.hooks.Intervention`s, so they run in the same KV-cached generation and
cross-entropy code as notebook 03's:
- a latent's unit decoder row ablated everywhere the refusal direction is (`latent_ablation`), or the span
  of k latents' rows (subspace ablation);
- a latent's row, scaled to a norm, added at the SAE's layer (`latent_addition`);
- the SAE spliced in at its hook with the error term kept and some latents clamped (`sae_clamp`, through
  sae_lens' own forward): the residual becomes decode(f') + (x − decode(f)), where f = encode(x) and f' is f with the
  clamped latents set to a value, so with nothing clamped the model is unchanged.
Conditions are judged by `helpers.evaluation.evaluate_refusal`: Arditi et al.'s substring judge, Kissane et al.'s
starts-with judge and a degeneration check (`helpers.judges`), so that a "bypass" that is only gibberish shows up.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from helpers.decomposition import unit_decoder
from helpers.hooks import Intervention
from helpers.judges import Rate


def latent_directions(sae, latents: Sequence[int]) -> Tensor:
    """The unit decoder rows `[k, d_model]` of `latents`, in the model's units (float32)."""
    latents = list(latents)
    if not latents:
        raise ValueError("latent_directions needs at least one latent index.")
    bad = [k for k in latents if not 0 <= int(k) < sae.cfg.d_sae]
    if bad:
        raise ValueError(f"Latents {bad} are out of range for an SAE with {sae.cfg.d_sae} latents.")
    return unit_decoder(sae)[torch.tensor(latents)].float()


def latent_ablation(sae, latents: Sequence[int]) -> Intervention:
    """Project the span of the latents' decoder rows out of every layer's residual stream (as for r)."""
    rows = latent_directions(sae, latents)
    return Intervention(ablate=rows[0] if len(rows) == 1 else rows)


def latent_addition(sae, latent: int, layer: int, norm: float, prompt_only: bool = False) -> Intervention:
    """Add the latent's unit decoder row, scaled to `norm`, at `blocks.{layer}.hook_resid_pre`."""
    return Intervention(add=latent_directions(sae, [latent])[0] * float(norm), add_layer=layer,
                        prompt_only=prompt_only)


def sae_clamp(sae, latents: Sequence[int], value: float | Tensor | None) -> Callable[[Tensor], Tensor]:
    """The residual edit of an SAE spliced in with the error term, with `latents` clamped to `value`
    (a number, or one per latent; `None` clamps nothing): x ↦ decode(f') + (x − decode(f)), f = encode(x) and f'
    the same with the clamped latents set to `value`.

    Computed by sae_lens' own forward pass (`use_error_term=True`, a hook on `hook_sae_acts_post` setting the
    latents), so whatever the SAE does at run time (activation normalisation, its own decode) is included. With
    nothing clamped it returns x itself."""
    idx = torch.tensor(list(latents), dtype=torch.long)
    if value is not None:
        value = torch.as_tensor(value, dtype=torch.float32)
        if value.dim() > 1 or (value.dim() == 1 and len(value) != len(idx)):
            raise ValueError(f"value must be one number or one per latent ({len(idx)}), got shape {tuple(value.shape)}.")
    W_dec = sae.W_dec.detach()

    def set_latents(acts: Tensor, hook=None) -> Tensor:
        acts = acts.clone()
        acts[..., idx] = value.to(acts)
        return acts

    def edit(x: Tensor) -> Tensor:
        if value is None or len(idx) == 0:
            return x
        previous = sae.use_error_term
        sae.use_error_term = True
        try:
            with sae.hooks(fwd_hooks=[("hook_sae_acts_post", set_latents)]):
                out = sae(x.to(W_dec))  # the SAE's dtype and device
        finally:
            sae.use_error_term = previous
        return out.to(x)

    return edit


def clamp_intervention(sae, latents: Sequence[int], value: float | Tensor | None, layer: int) -> Intervention:
    return Intervention(edit=sae_clamp(sae, latents, value), edit_layer=layer)


@torch.no_grad()
def spliced_output(sae, x: Tensor) -> Tensor:
    """sae_lens' own splice with the error term: decode(encode(x)) + (x − decode(encode(x))), via
    `sae.use_error_term` (the reference `sae_clamp(..., None)` must agree with)."""
    previous = sae.use_error_term
    sae.use_error_term = True
    try:
        return sae(x)
    finally:
        sae.use_error_term = previous


def smallest_matching_k(ks: Sequence[int], rates: Sequence[Rate], target: Rate) -> int | None:
    """The smallest k whose bypass matches the target's: a refusal rate at most one standard error (of either rate)
    above the target's. Lower counts as matching (a stronger bypass; 0/40 against r's 1/40 has a standard error of
    0, so a two-sided test would call it a miss); whether it is gibberish is the degeneration judge's call."""
    for k, rate in zip(ks, rates):
        if rate.rate - target.rate <= max(rate.stderr, target.stderr):
            return k
    return None


def subspace_sweep(saes: dict, rankings: dict[str, dict], ks: Sequence[int],
                   done: dict[tuple[str, tuple[int, ...]], str] | None = None,
                   ) -> tuple[dict[tuple[str, str, int], str], dict[str, str], dict[str, Intervention]]:
    """The span ablations of each SAE's top-k latents, by both of notebook 04's rankings (`delta`, `omp`), for each
    k in `ks`. Returns (keys: (sae, ranking, k) -> condition name; same_as: condition -> the earlier condition with
    the same latent set, not run again; to_run: condition -> Intervention). `done` maps (sae, sorted latents) to
    conditions already generated elsewhere (say the top latent alone)."""
    done = dict(done or {})
    keys, same_as, to_run = {}, {}, {}
    for name, sae in saes.items():
        for ranking in ("delta", "omp"):
            for k in ks:
                latents = tuple(sorted(rankings[name][ranking][:k]))
                key = keys[(name, ranking, k)] = f"ablate {name} top-{k} ({ranking})"
                if (name, latents) in done:
                    same_as[key] = done[(name, latents)]
                else:
                    done[(name, latents)] = key
                    to_run[key] = latent_ablation(sae, latents)
    return keys, same_as, to_run


def load_rankings(run_dir) -> dict[str, dict]:
    """Notebook 04's latent rankings per SAE: the top latent by decoder cosine with r (`top`, `cosine`), the same
    for r from Kissane et al.'s protocol (`top_paper`, `cosine_paper`; None without the public splits), the top 16
    by |Δ activation| (`delta`) and by matching pursuit (`omp`). A clear error names notebook 04 when missing."""
    import json
    from pathlib import Path

    path = Path(run_dir) / "decompose_refusal_direction" / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"Missing {path}: run notebook 04 (04_decompose_refusal_direction) for this preset first.")
    res = json.loads(path.read_text())
    paper = res["protocols"][res["paper_protocol"]]["max_decoder_cosine"] if res.get("paper_protocol") else {}
    return {name: {"top": best["latent"], "cosine": best["cosine"], "delta": res["sparsity"][name]["top_delta_latents"],
                   "omp": res["sparsity"][name]["omp_latents"],
                   # the top latent of r taken with Kissane et al.'s own prompts and template (None without them)
                   "top_paper": paper.get(name, {}).get("latent"), "cosine_paper": paper.get(name, {}).get("cosine")}
            for name, best in res["max_decoder_cosine"].items()}
