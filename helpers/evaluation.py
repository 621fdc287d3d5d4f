"""Step 3 of Arditi et al.: test the chosen direction.

- completions and refusal rates (substring and starts-with judges, degeneration) under ablation / activation
  addition / subtraction, or any named `Intervention`s (notebook 05's too);
- weight orthogonalization (the ablation folded into the weights) checked against the hooks;
- side effects: cross-entropy loss on held-out webtext and chat text;
- geometry: cosine of last-token activations with the direction.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from helpers.generation import batched, generate, position_ids
from helpers.hooks import Intervention
from helpers.judges import judge_completions, rate_of
from helpers.models import LoadedModel


def conditions(direction: Tensor, layer: int) -> dict[str, Intervention]:
    """The interventions Arditi et al. evaluate, by name."""
    return {
        "none": Intervention(),
        "ablation": Intervention(ablate=direction),
        "actadd": Intervention(add=direction, add_layer=layer, coeff=1.0),
        "actsub": Intervention(add=direction, add_layer=layer, coeff=-1.0),
    }


def evaluate_refusal(model: LoadedModel, instructions: list[str], interventions: dict[str, Intervention],
                     max_new_tokens: int, batch_size: int) -> dict[str, dict]:
    """Greedy completions under each named intervention, judged by the substring and starts-with judges and the
    degeneration check (`judges.judge_completions`): per name `{"completions", "substring", "starts_with",
    "degenerate", "seconds"}`; one console line per condition (`judges.rate_of` turns a judge's entry into a Rate)."""
    results = {}
    for name, iv in interventions.items():
        start = time.perf_counter()
        completions = generate(model, instructions, iv, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               progress=False)
        r = results[name] = {"completions": completions, **judge_completions(completions),
                             "seconds": time.perf_counter() - start}
        print(f"  {name:38s} {rate_of(r)}  starts-with {r['starts_with']['rate']:6.1%}  "
              f"degenerate {r['degenerate']['rate']:5.1%}  ({r['seconds']:.0f} s)", flush=True)
    return results


def project_out_of_weight(weight: Tensor, direction: Tensor) -> Tensor:
    """W − r̂ r̂ᵀ W for a weight whose *output* dimension (rows, nn.Linear layout `[d_model, d_in]`) is d_model."""
    r_hat = direction / direction.norm()
    return weight - torch.outer(r_hat, r_hat @ weight)


@torch.no_grad()
def orthogonalized_copy(hf_model, direction: Tensor,
                        project: Callable[[Tensor, Tensor], Tensor] = project_out_of_weight):
    """A copy of a Hugging Face model with `direction` projected out of every matrix that writes to the
    residual stream (token embedding, attention output, MLP output, their biases): ablation folded into the weights.

    `project(weight, direction)` orthogonalizes one matrix in the nn.Linear layout `[d_model, d_in]` (a learner's
    version plugs in here); the embedding `[vocab, d_model]` goes through it transposed, a bias as one column.
    The unembedding is untied from the embedding first (Qwen2.5-0.5B ties them), so only the writing side changes.
    """
    hf = copy.deepcopy(hf_model)
    r = direction.to(next(hf.parameters()).dtype).to(next(hf.parameters()).device)
    emb = hf.get_input_embeddings()
    if hf.get_output_embeddings() is not None and hf.get_output_embeddings().weight is emb.weight:
        hf.get_output_embeddings().weight = torch.nn.Parameter(emb.weight.detach().clone())
    emb.weight.data = project(emb.weight.data.T, r).T.contiguous()  # rows are token vectors
    for layer in hf.model.layers:
        for linear in (layer.self_attn.o_proj, layer.mlp.down_proj):
            linear.weight.data = project(linear.weight.data, r)
            if linear.bias is not None:
                linear.bias.data = project(linear.bias.data[:, None], r)[:, 0]
    return hf


def post_block_norms(hf_model) -> bool:
    """Whether each block normalises its attention and MLP outputs before adding them to the residual stream (Gemma 2
    and 3's post-attention / post-feedforward norms): then no weight edit removes a direction from what a block
    writes, and weight orthogonalization only approximates the ablation (measured on tiny random Gemma 2 / 3 models:
    relative logit differences of 3.6e-2 to 5.0e-2, against 1.4e-6 for Llama)."""
    return hasattr(hf_model.model.layers[0], "post_feedforward_layernorm")


@torch.no_grad()
def orthogonalization_check(model: LoadedModel, direction: Tensor, instructions: list[str],
                            project: Callable[[Tensor, Tensor], Tensor] = project_out_of_weight,
                            copy: Callable | None = None) -> float:
    """Relative difference ||logits_orth - logits_hooked|| / ||logits_hooked|| over all real positions. `copy(hf_model,
    direction, project)` builds the orthogonalized model (default `orthogonalized_copy`; a learner's plugs in)."""
    orth = (copy or orthogonalized_copy)(model.hf, direction, project)
    enc = model.tokenize_instructions(instructions)
    pos = position_ids(enc["attention_mask"])
    mask = enc["attention_mask"].bool()
    with model.hooks(Intervention(ablate=direction)):
        hooked = model.hf(**enc, position_ids=pos).logits[mask]
    folded = orth(**enc, position_ids=pos).logits[mask]
    del orth
    return ((folded - hooked).norm() / hooked.norm()).item()


def next_token_losses(logits: Tensor, ids: Tensor) -> Tensor:
    """Cross-entropy (nats) of each next token `[batch, pos - 1]` from logits `[batch, pos, d_vocab]`."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), ids[:, 1:], reduction="none")


@torch.no_grad()
def window_cross_entropies(model: LoadedModel, windows: list[list[int]], intervention: Intervention = Intervention(),
                           batch_size: int = 8) -> Tensor:
    """Mean next-token cross-entropy (nats) of each token window (e.g. from `corpora.token_windows`), `[n]`."""
    out = []
    for batch in tqdm(batched(windows, batch_size), desc="cross-entropy", unit="batch", leave=False):
        ids = torch.tensor(batch, device=model.device)
        with model.hooks(intervention):
            logits = model.hf(input_ids=ids, use_cache=False).logits
        out.append(next_token_losses(logits, ids).mean(-1).double().cpu())
    return torch.cat(out)


def cross_entropy(model: LoadedModel, windows: list[list[int]], intervention: Intervention = Intervention(),
                  batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over equal-length token windows."""
    return window_cross_entropies(model, windows, intervention, batch_size).mean().item()


@torch.no_grad()
def cross_entropy_table(model: LoadedModel, windows: list[list[int]], interventions: dict[str, Intervention],
                        batch_size: int = 8) -> dict[str, dict]:
    """Per intervention: mean CE over windows with its standard error, and the paired increase over the first
    (clean) intervention with its standard error over windows.

    Each batch of windows runs clean once, keeping every layer's residual stream; an intervention that first
    acts at layer L > 0 (an addition or an edit, no ablation) restarts there from the clean stream
    (`generation.layers_from`), which gives the same numbers for about (n_layers - L) / n_layers of the work."""
    from helpers.generation import layers_from
    from helpers.selection import mean_and_se

    per: dict[str, list[Tensor]] = {k: [] for k in interventions}
    steps = tqdm(total=len(batched(windows, batch_size)) * len(interventions), desc="cross-entropy", unit="pass",
                 leave=False)
    for batch in batched(windows, batch_size):
        ids = torch.tensor(batch, device=model.device)
        out = model.hf.model(input_ids=ids, use_cache=False, output_hidden_states=True)
        hidden, clean = out.hidden_states, next_token_losses(model.unembed(out.last_hidden_state), ids)
        del out
        for name, iv in interventions.items():
            start = _first_layer(iv, model.n_layers)
            if start >= model.n_layers:
                losses = clean
            else:
                with model.hooks(iv), layers_from(model.hf, start):
                    last = model.hf.model(inputs_embeds=hidden[start], use_cache=False).last_hidden_state
                losses = next_token_losses(model.unembed(last), ids)
            per[name].append(losses.mean(-1).double().cpu())
            steps.update()
    steps.close()
    ce = {k: torch.cat(v) for k, v in per.items()}
    clean = next(iter(ce.values()))
    result = {}
    for k, v in ce.items():
        mean, se = mean_and_se(v)
        inc, inc_se = mean_and_se(v - clean)
        result[k] = {"ce": mean, "se": se, "increase": inc, "increase_se": inc_se, "n_windows": len(v)}
    return result


def _first_layer(intervention: Intervention, n_layers: int) -> int:
    """The first layer whose input an intervention changes (n_layers: none)."""
    if intervention.ablate is not None:
        return 0
    layers = [layer for layer in (intervention.add_layer, intervention.edit_layer) if layer is not None]
    return min(layers, default=n_layers)


@torch.no_grad()
def last_token_cosines(model: LoadedModel, instructions: list[str], direction: Tensor, layer: int,
                       batch_size: int = 16) -> list[float]:
    """Cosine between each prompt's last-token `blocks.{layer}.hook_resid_pre` and the direction."""
    r_hat = direction / direction.norm()
    out = []
    for batch in batched(instructions, batch_size):
        enc = model.tokenize_instructions(batch)
        hidden = model.hf.model(**enc, position_ids=position_ids(enc["attention_mask"]),
                                output_hidden_states=True).hidden_states[layer][:, -1]
        out.extend(torch.nn.functional.cosine_similarity(hidden.float(), r_hat[None].to(hidden), dim=-1).tolist())
    return out

