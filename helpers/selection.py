"""Step 2 of Arditi et al.: score every candidate direction and select one.

For candidate r = mean_diffs[pos, layer], on validation prompts:
- bypass score: mean refusal metric on harmful prompts with r ablated everywhere (lower = better);
- induce score: mean refusal metric on harmless prompts with r added at `layer` (must be > 0);
- KL score: KL(clean || ablated) of the last-position next-token distribution on harmless prompts (< 0.1).
Keep candidates with induce > 0, KL < 0.1 and layer < 0.8 L; pick the lowest bypass score.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from helpers.generation import cache_prompt_batches, last_token_logits, last_token_logits_from_layer
from helpers.hooks import Intervention
from helpers.judges import refusal_metric
from helpers.models import LoadedModel


@dataclass
class CandidateScores:
    """Scores for every candidate, each `[n_positions, n_layers]` (NaN where not computed, or where the
    candidate is the zero vector: at layer 0 every post-instruction token has the same embedding)."""

    positions: list[int]
    bypass: Tensor
    induce: Tensor
    kl: Tensor
    baseline_harmful: float  # mean refusal metric on harmful prompts, no intervention
    baseline_harmless: float

    def to_json(self) -> dict:
        return {"positions": self.positions, "bypass": self.bypass.tolist(), "induce": self.induce.tolist(),
                "kl": self.kl.tolist(), "baseline_harmful": self.baseline_harmful,
                "baseline_harmless": self.baseline_harmless}


def kl_last_token(clean_logits: Tensor, other_logits: Tensor) -> Tensor:
    """Per-prompt KL(clean || other) of next-token distributions, `[batch]`."""
    p = torch.log_softmax(clean_logits.double(), -1)
    q = torch.log_softmax(other_logits.double(), -1)
    return (p.exp() * (p - q)).sum(-1)


def score_candidates(model: LoadedModel, mean_diffs: Tensor, positions: list[int], harmful_val: list[str],
                     harmless_val: list[str], refusal_ids: list[int], max_layer: int | None = None,
                     batch_size: int = 32, layer_step: int = 1) -> CandidateScores:
    """Bypass, induce and KL scores for every candidate with layer < `max_layer` (default: all layers),
    every `layer_step`-th layer (1 = all)."""
    n_pos, n_layers, _ = mean_diffs.shape
    max_layer = n_layers if max_layer is None else max_layer
    shape = (n_pos, n_layers)
    bypass, induce, kl = (torch.full(shape, math.nan) for _ in range(3))
    clean_harmful = last_token_logits(model, harmful_val, batch_size=batch_size)
    harmless_batches = cache_prompt_batches(model, harmless_val, batch_size)  # induce passes start at their layer
    clean_harmless = harmless_batches.clean_logits
    todo = [(p, layer) for p in range(n_pos) for layer in range(0, max_layer, layer_step)]
    for p, layer in tqdm(todo, desc="scoring candidates", unit="cand"):
        r = mean_diffs[p, layer].float()
        if r.norm() < 1e-6:  # e.g. layer 0 at a template token: the same embedding for every prompt
            continue
        ablate = Intervention(ablate=r)
        bypass[p, layer] = refusal_metric(last_token_logits(model, harmful_val, ablate, batch_size), refusal_ids).mean()
        ablated_harmless = last_token_logits(model, harmless_val, ablate, batch_size)
        kl[p, layer] = kl_last_token(clean_harmless, ablated_harmless).mean()
        add = Intervention(add=r, add_layer=layer, coeff=1.0)
        induce[p, layer] = refusal_metric(last_token_logits_from_layer(model, harmless_batches, layer, add),
                                          refusal_ids).mean()
    return CandidateScores(positions=positions, bypass=bypass, induce=induce, kl=kl,
                           baseline_harmful=refusal_metric(clean_harmful, refusal_ids).mean().item(),
                           baseline_harmless=refusal_metric(clean_harmless, refusal_ids).mean().item())


@dataclass(frozen=True)
class Selection:
    """The chosen candidate: index into the position list, layer, and its scores."""

    pos_index: int
    position: int
    layer: int
    bypass_score: float
    induce_score: float
    kl_score: float

    def to_json(self) -> dict:
        return asdict(self)


def select_direction(scores: CandidateScores, n_layers: int, kl_threshold: float = 0.1,
                     induce_threshold: float = 0.0, max_layer_frac: float = 0.8) -> Selection:
    """Lowest bypass score among candidates with induce > threshold, KL < threshold and layer < frac * L."""
    best: Selection | None = None
    for p, position in enumerate(scores.positions):
        for layer in range(scores.bypass.shape[1]):
            b, i, k = (float(t[p, layer]) for t in (scores.bypass, scores.induce, scores.kl))
            if math.isnan(b) or layer >= max_layer_frac * n_layers or i <= induce_threshold or k >= kl_threshold:
                continue
            if best is None or b < best.bypass_score:
                best = Selection(p, position, layer, b, i, k)
    if best is None:
        raise RuntimeError(
            f"No candidate passes the filters (induce > {induce_threshold}, KL < {kl_threshold}, "
            f"layer < {max_layer_frac} * {n_layers}). Use more training prompts or relax the thresholds.")
    return best
