"""Step 1 of Arditi et al.: candidate refusal directions as differences of mean activations.

For every layer L and every post-instruction position p (negative indices into the
chat-formatted prompt), `r[p, L] = mean_harmful(resid_pre_L[p]) - mean_harmless(resid_pre_L[p])`,
accumulated in float64 and not normalised.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from helpers.generation import batched, generate, last_token_logits, position_ids
from helpers.judges import is_refusal, refusal_metric
from helpers.models import LoadedModel


def post_instruction_positions(model: LoadedModel) -> list[int]:
    """Negative indices of the tokens after the instruction (for Qwen: -5..-1)."""
    n = len(model.post_instruction_tokens())
    return list(range(-n, 0))


@torch.no_grad()
def residuals_at(model: LoadedModel, instructions: list[str], positions: list[int]) -> Tensor:
    """`blocks.L.hook_resid_pre` of each instruction at `positions`, every layer: `[n, n_positions, n_layers, d_model]`.

    Runs the Hugging Face model with `output_hidden_states` (its `hidden_states[L]` is TransformerLens'
    `blocks.L.hook_resid_pre`; left padding keeps negative positions aligned)."""
    enc = model.tokenize_instructions(instructions)
    out = model.hf.model(**enc, position_ids=position_ids(enc["attention_mask"]), output_hidden_states=True)
    resid = torch.stack(out.hidden_states[: model.n_layers], dim=1)  # [batch, layer, pos, d_model]
    return resid[:, :, positions, :].transpose(1, 2).float().cpu()


def stacked_residuals(model: LoadedModel, instructions: list[str], positions: list[int], batch_size: int = 16,
                      desc: str = "residuals") -> Tensor:
    """`residuals_at` over all of `instructions` in batches: `[n, n_positions, n_layers, d_model]` float32 on the CPU
    (for n_train prompts; `mean_activations` streams when only the mean is needed)."""
    if not instructions:
        raise ValueError("stacked_residuals needs at least one instruction.")
    return torch.cat([residuals_at(model, batch, positions)
                      for batch in tqdm(batched(instructions, batch_size), desc=desc, unit="batch")])


def mean_activations(model: LoadedModel, instructions: list[str], positions: list[int],
                     batch_size: int = 16, desc: str = "mean activations") -> Tensor:
    """Mean `blocks.L.hook_resid_pre` over instructions: `[n_positions, n_layers, d_model]`, accumulated in float64."""
    if not instructions:
        raise ValueError("mean_activations needs at least one instruction.")
    total = torch.zeros(len(positions), model.n_layers, model.d_model, dtype=torch.float64)
    for batch in tqdm(batched(instructions, batch_size), desc=desc, unit="batch"):
        total += residuals_at(model, batch, positions).double().sum(dim=0)
    return total / len(instructions)


def candidate_directions(model: LoadedModel, harmful: list[str], harmless: list[str],
                         batch_size: int = 16) -> Tensor:
    """Difference-in-means candidates `[n_positions, n_layers, d_model]` (float64, not normalised)."""
    positions = post_instruction_positions(model)
    mean_harmful = mean_activations(model, harmful, positions, batch_size, "harmful means")
    mean_harmless = mean_activations(model, harmless, positions, batch_size, "harmless means")
    return mean_harmful - mean_harmless


def filter_by_refusal_metric(model: LoadedModel, harmful: list[str], harmless: list[str], refusal_ids: list[int],
                             batch_size: int = 16) -> tuple[list[str], list[str]]:
    """Keep harmful prompts the model refuses (metric > 0) and harmless ones it answers (metric < 0), as Arditi et al."""
    h = refusal_metric(last_token_logits(model, harmful, batch_size=batch_size), refusal_ids)
    hl = refusal_metric(last_token_logits(model, harmless, batch_size=batch_size), refusal_ids)
    return ([p for p, s in zip(harmful, h) if s > 0], [p for p, s in zip(harmless, hl) if s < 0])


def filter_by_generation(model: LoadedModel, harmful: list[str], harmless: list[str], max_new_tokens: int = 8,
                         batch_size: int = 16) -> tuple[list[str], list[str]]:
    """Keep harmful prompts whose short greedy completion is a refusal (substring judge) and harmless ones
    whose completion is not: Arditi et al.'s filter with the judge instead of the first-token metric, for
    models whose refusals are marginal first-token decisions."""
    h = generate(model, harmful, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
    hl = generate(model, harmless, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
    return ([p for p, c in zip(harmful, h) if is_refusal(c)], [p for p, c in zip(harmless, hl) if not is_refusal(c)])


def filtered_balanced(model: LoadedModel, harmful: list[dict], harmless: list[dict], how: str | None, n: int,
                      refusal_ids: list[int], batch_size: int = 16) -> tuple[list[str], list[str], dict]:
    """Filter a whole split the way the training prompts are filtered, then take up to `n` per side balanced
    across categories (Arditi et al. filter their validation prompts too: `filter_val=True`).
    Returns (harmful, harmless, counts) with counts = prompts before and after the filter."""
    from helpers.instructions import balanced_sample, instructions_only

    kept_h, kept_hl = filter_training_prompts(model, instructions_only(harmful), instructions_only(harmless), how,
                                              refusal_ids, batch_size)
    kept_h, kept_hl = set(kept_h), set(kept_hl)
    h = [it for it in harmful if it["instruction"] in kept_h]
    hl = [it for it in harmless if it["instruction"] in kept_hl]
    if not h or not hl:
        raise ValueError(f"The {how!r} filter kept {len(h)} harmful and {len(hl)} harmless prompts: too few to score "
                         "candidates. Use more prompts or filter_val=False.")
    counts = {"harmful": [len(harmful), len(h)], "harmless": [len(harmless), len(hl)]}
    return (instructions_only(balanced_sample(h, min(n, len(h)))), instructions_only(balanced_sample(hl, min(n, len(hl)))),
            counts)


def filter_training_prompts(model: LoadedModel, harmful: list[str], harmless: list[str], how: str | None,
                            refusal_ids: list[int], batch_size: int = 16) -> tuple[list[str], list[str]]:
    """Apply the configured training-prompt filter: "metric" (the paper's), "generation", or None."""
    if how is None:
        return harmful, harmless
    if how == "metric":
        return filter_by_refusal_metric(model, harmful, harmless, refusal_ids, batch_size)
    if how == "generation":
        return filter_by_generation(model, harmful, harmless, batch_size=batch_size)
    raise ValueError(f"Unknown filter {how!r}; valid: 'metric', 'generation' or None")
