"""Step 2 of Arditi et al.: score every candidate direction and select one.

For candidate r = mean_diffs[pos, layer], on validation prompts:
- bypass score: mean refusal metric on harmful prompts with r ablated everywhere (lower = better);
- induce score: mean refusal metric on harmless prompts with r added at `layer` (must be > 0);
- KL score: KL(clean || ablated) of the last-position next-token distribution on harmless prompts (< 0.1).
Keep candidates with induce > 0, KL < 0.1 and layer < int(0.8 L) (as andyrdt/refusal_direction's
`prune_layer_percentage=0.2`); pick the lowest bypass score. Every score is a mean over prompts and
comes with its standard error over prompts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from helpers.generation import cache_prompt_batches, last_token_logits, last_token_logits_from_layer
from helpers.hooks import Intervention
from helpers.judges import refusal_metric
from helpers.models import LoadedModel


MAX_LAYER_FRACTION = 0.8


def max_selectable_layer(n_layers: int, fraction: float = MAX_LAYER_FRACTION) -> int:
    """Candidates must come from a layer < this: int(0.8 L), as in Arditi et al.'s code (19 for 24 layers)."""
    return int(fraction * n_layers)


def mean_and_se(values: Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n); NaN for n < 2)."""
    v = values.double().flatten()
    se = (v.std(unbiased=True) / math.sqrt(len(v))).item() if len(v) > 1 else math.nan
    return v.mean().item(), se


@dataclass
class CandidateScores:
    """Scores for every candidate, each `[n_positions, n_layers]` (NaN where not computed, or where the
    candidate is the zero vector: at layer 0 every post-instruction token has the same embedding), with
    their standard errors over validation prompts (`*_se`)."""

    positions: list[int]
    bypass: Tensor
    induce: Tensor
    kl: Tensor
    baseline_harmful: float  # mean refusal metric on harmful prompts, no intervention
    baseline_harmless: float
    bypass_se: Tensor | None = None
    induce_se: Tensor | None = None
    kl_se: Tensor | None = None
    n_harmful: int = 0
    n_harmless: int = 0

    def to_json(self) -> dict:
        out = {"positions": self.positions, "baseline_harmful": self.baseline_harmful,
               "baseline_harmless": self.baseline_harmless, "n_harmful": self.n_harmful,
               "n_harmless": self.n_harmless}
        for name in ("bypass", "induce", "kl", "bypass_se", "induce_se", "kl_se"):
            t = getattr(self, name)
            out[name] = None if t is None else t.tolist()
        return out


def kl_last_token(clean_logits: Tensor, other_logits: Tensor) -> Tensor:
    """Per-prompt KL(clean || other) of next-token distributions, `[batch]`."""
    p = torch.log_softmax(clean_logits.double(), -1)
    q = torch.log_softmax(other_logits.double(), -1)
    return (p.exp() * (p - q)).sum(-1)


def score_candidates(model: LoadedModel, mean_diffs: Tensor, positions: list[int], harmful_val: list[str],
                     harmless_val: list[str], refusal_ids: list[int], max_layer: int | None = None,
                     batch_size: int = 32, layer_step: int = 1, min_layer: int = 0) -> CandidateScores:
    """Bypass, induce and KL scores for every candidate with `min_layer` <= layer < `max_layer` (default: all
    layers), every `layer_step`-th layer (1 = all). Ablated passes run the prompts' shared template prefix once
    (`last_token_logits(share_prefix=True)`); addition passes start at their layer (`last_token_logits_from_layer`)."""
    n_pos, n_layers, _ = mean_diffs.shape
    max_layer = n_layers if max_layer is None else max_layer
    shape = (n_pos, n_layers)
    bypass, induce, kl, bypass_se, induce_se, kl_se = (torch.full(shape, math.nan) for _ in range(6))
    clean_harmful = last_token_logits(model, harmful_val, batch_size=batch_size, share_prefix=True)
    harmless_batches = cache_prompt_batches(model, harmless_val, batch_size)  # induce passes start at their layer
    clean_harmless = harmless_batches.clean_logits
    todo = [(p, layer) for p in range(n_pos) for layer in range(min_layer, max_layer, layer_step)]
    for p, layer in tqdm(todo, desc="scoring candidates", unit="cand"):
        r = mean_diffs[p, layer].float()
        if r.norm() < 1e-6:  # e.g. layer 0 at a template token: the same embedding for every prompt
            continue
        ablate = Intervention(ablate=r)
        bypass[p, layer], bypass_se[p, layer] = mean_and_se(
            refusal_metric(last_token_logits(model, harmful_val, ablate, batch_size, share_prefix=True), refusal_ids))
        ablated_harmless = last_token_logits(model, harmless_val, ablate, batch_size, share_prefix=True)
        kl[p, layer], kl_se[p, layer] = mean_and_se(kl_last_token(clean_harmless, ablated_harmless))
        add = Intervention(add=r, add_layer=layer, coeff=1.0)
        induce[p, layer], induce_se[p, layer] = mean_and_se(
            refusal_metric(last_token_logits_from_layer(model, harmless_batches, layer, add), refusal_ids))
    return CandidateScores(positions=positions, bypass=bypass, induce=induce, kl=kl,
                           baseline_harmful=refusal_metric(clean_harmful, refusal_ids).mean().item(),
                           baseline_harmless=refusal_metric(clean_harmless, refusal_ids).mean().item(),
                           bypass_se=bypass_se, induce_se=induce_se, kl_se=kl_se,
                           n_harmful=len(harmful_val), n_harmless=len(harmless_val))


@dataclass(frozen=True)
class Selection:
    """The chosen candidate: index into the position list, layer, and its scores."""

    pos_index: int
    position: int
    layer: int
    bypass_score: float
    induce_score: float
    kl_score: float
    bypass_se: float = math.nan
    induce_se: float = math.nan
    kl_se: float = math.nan
    filters_passed: bool = True  # False only for an explicit fallback (smoke runs)
    induce_checks: list | None = None  # the judged induce checks, when the induce filter is by generation

    def to_json(self) -> dict:
        return asdict(self)


class SelectionError(RuntimeError):
    """No candidate direction passes the selection filters."""


def _selection(scores: CandidateScores, p: int, layer: int, passed: bool = True) -> Selection:
    se = [math.nan if t is None else float(t[p, layer]) for t in (scores.bypass_se, scores.induce_se, scores.kl_se)]
    return Selection(p, scores.positions[p], layer, float(scores.bypass[p, layer]), float(scores.induce[p, layer]),
                     float(scores.kl[p, layer]), *se, filters_passed=passed)


def select_direction(scores: CandidateScores, n_layers: int, kl_threshold: float = 0.1,
                     induce_threshold: float = 0.0, max_layer_frac: float = MAX_LAYER_FRACTION,
                     fallback: bool = False, induce_check: Callable[[int, int], float] | None = None,
                     induce_rate: float = 0.5, max_checks: int = 12) -> Selection:
    """Lowest bypass score among candidates with induce > threshold, KL < threshold and layer < int(frac * L).

    `induce_check(pos_index, layer)` replaces the induce-score filter (Arditi et al.'s refusal metric > 0) by a
    judged one: the candidates passing KL and the layer cut are tried in order of bypass score, and the first
    whose check (e.g. the refusal rate of short greedy completions of harmless prompts with the direction
    added) exceeds `induce_rate` wins; at most `max_checks` are tried. For models whose refusals are marginal
    first-token decisions (the offline preset's `induce_filter="generation"`). The checks are kept in
    `Selection.induce_checks`.

    When none passes: a `SelectionError` listing the best candidates and their scores, or, with `fallback`
    (meant for smoke runs only), the lowest bypass score among the scored layers < int(frac * L), marked
    `filters_passed=False`."""
    cut = max_selectable_layer(n_layers, max_layer_frac)
    scored = [(p, layer) for p in range(len(scores.positions)) for layer in range(min(cut, scores.bypass.shape[1]))
              if not math.isnan(float(scores.bypass[p, layer]))]
    checks: list[dict] = []
    if induce_check is None:
        passing = [(p, layer) for p, layer in scored
                   if float(scores.induce[p, layer]) > induce_threshold and float(scores.kl[p, layer]) < kl_threshold]
        if passing:
            return _selection(scores, *min(passing, key=lambda c: float(scores.bypass[c])))
    else:
        kl_ok = sorted([c for c in scored if float(scores.kl[c]) < kl_threshold], key=lambda c: float(scores.bypass[c]))
        for p, layer in kl_ok[:max_checks]:
            rate = float(induce_check(p, layer))
            checks.append({"position": scores.positions[p], "layer": layer, "induce_rate": rate})
            if rate > induce_rate:
                return dataclasses.replace(_selection(scores, p, layer), induce_checks=checks)
    if not scored:
        raise SelectionError(f"No candidate was scored below layer {cut} (= int({max_layer_frac} * {n_layers})).")
    if fallback:
        return _selection(scores, *min(scored, key=lambda c: float(scores.bypass[c])), passed=False)
    best = sorted(scored, key=lambda c: float(scores.bypass[c]))[:5]
    rows = "; ".join(f"pos {scores.positions[p]} layer {layer}: bypass {float(scores.bypass[p, layer]):.2f}, "
                     f"induce {float(scores.induce[p, layer]):.2f}, KL {float(scores.kl[p, layer]):.3f}"
                     for p, layer in best)
    if checks:
        rows += "; judged induce rates (refusal rate under addition): " + "; ".join(
            f"pos {c['position']} layer {c['layer']}: {c['induce_rate']:.0%}" for c in checks)
    induce_rule = f"induce rate > {induce_rate} (judged)" if induce_check else f"induce > {induce_threshold}"
    raise SelectionError(
        f"No candidate passes the filters ({induce_rule}, KL < {kl_threshold}, layer < {cut}). "
        f"Lowest bypass scores: {rows}. Use more or other training prompts, or relax the thresholds "
        "(select_direction(..., kl_threshold=..., induce_threshold=...)).")


def generation_induce_check(model: LoadedModel, harmless: list[str], mean_diffs: Tensor, max_new_tokens: int = 8,
                            batch_size: int = 16) -> Callable[[int, int], float]:
    """`induce_check` for `select_direction`: the substring-judged refusal rate of `max_new_tokens` greedy tokens on
    the harmless prompts with candidate `mean_diffs[pos_index, layer]` added at its layer (the same judge and
    length as `filter_train="generation"`)."""
    from helpers.generation import generate
    from helpers.judges import refusal_rate

    def check(p: int, layer: int) -> float:
        iv = Intervention(add=mean_diffs[p, layer].float(), add_layer=layer)
        return refusal_rate(generate(model, harmless, iv, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                     progress=False)).rate

    return check


class NoRefusalError(RuntimeError):
    """The model hardly refuses harmful prompts: there is no refusal for a direction to mediate."""


def require_refusals(model: LoadedModel, harmful: list[str], max_new_tokens: int = 16, batch_size: int = 16,
                     minimum: float = 0.25, fallback: bool = False):
    """The share of `harmful` prompts the model refuses (greedy completions, substring judge) with its 95% interval;
    when even the interval's top is below `minimum`, selection would pick a meaningless direction, so this stops
    with `NoRefusalError` in one line (with `fallback`, the mechanics-only presets, it says so and goes on)."""
    from helpers.generation import generate
    from helpers.judges import refusal_rate

    rate = refusal_rate(generate(model, harmful, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False))
    if rate.interval[1] < minimum:
        message = (f"{model.name} refuses {round(rate.rate * rate.n)} of {rate.n} harmful prompts ({rate}) with "
                   f"system_prompt={model.system_prompt!r}: too few refusals for a refusal direction (the 95% "
                   f"interval's top is below {minimum:.0%})")
        if fallback:
            print(f"FALLBACK (mechanics only): {message}; going on.")
            return rate
        advice = ("try the template's default system prompt (system_prompt='default') or a model that refuses"
                  if model.system_prompt is None else "try a model that refuses")
        raise NoRefusalError(f"{message}, so none is selected: {advice}.")
    return rate
