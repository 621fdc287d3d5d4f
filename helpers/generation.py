"""Greedy, batched, left-padded generation (with optional interventions) and batched forward passes.

Generation is Hugging Face's `generate` (KV cache) on the model the TransformerBridge wraps; interventions
are the bridge's hooks (`LoadedModel.hooks`), so steered generation costs about as much as plain generation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from helpers.hooks import NO_INTERVENTION, Intervention
from helpers.models import LoadedModel, position_ids


def batched(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _length_sorted(instructions: list[str]) -> list[int]:
    """Order of indices by prompt length, so batches waste little on padding."""
    return sorted(range(len(instructions)), key=lambda i: len(instructions[i]))


@torch.no_grad()
def generate(model: LoadedModel, instructions: list[str], intervention: Intervention = NO_INTERVENTION,
             max_new_tokens: int = 64, batch_size: int = 16, progress: bool = True,
             stop_at_eos: bool = True) -> list[str]:
    """Greedy completions for chat-formatted instructions, in input order.

    `stop_at_eos=False` always generates `max_new_tokens` (for benchmarks with equal work).
    """
    from helpers.instructions import check_instructions

    instructions = check_instructions(instructions)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    intervention.check(model.d_model, model.n_layers)
    order = _length_sorted(instructions)
    out: dict[int, str] = {}
    batches = batched(order, batch_size)
    for batch in tqdm(batches, desc="generate", unit="batch", disable=not progress or len(batches) < 2):
        enc = model.tokenize_instructions([instructions[i] for i in batch])
        with model.hooks(intervention):
            tokens = model.hf.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                top_k=None, pad_token_id=model.tokenizer.pad_token_id,
                min_new_tokens=0 if stop_at_eos else max_new_tokens,
            )
        new = tokens[:, enc["input_ids"].shape[1]:]
        for i, text in zip(batch, model.tokenizer.batch_decode(new, skip_special_tokens=True)):
            out[i] = text
    return [out[i] for i in range(len(instructions))]


@torch.no_grad()
def last_token_logits(model: LoadedModel, instructions: list[str], intervention: Intervention = NO_INTERVENTION,
                      batch_size: int = 16, progress: bool = False) -> Tensor:
    """Next-token logits `[n, d_vocab]` at the last prompt position, optionally under an intervention."""
    order = _length_sorted(instructions)
    result = torch.empty(len(instructions), model.d_vocab, dtype=torch.float32)
    for batch in tqdm(batched(order, batch_size), desc="forward", disable=not progress):
        enc = model.tokenize_instructions([instructions[i] for i in batch])
        with model.hooks(intervention):
            hidden = model.hf.model(**enc, position_ids=position_ids(enc["attention_mask"])).last_hidden_state
        logits = model.hf.lm_head(hidden[:, -1, :])  # only the last position: skips most of the unembedding
        result[batch] = logits.float().cpu()
    return result


@dataclass
class PromptBatches:
    """Length-sorted batches of chat-formatted prompts with their clean residual streams, so that passes
    intervening at layer L can start at L instead of recomputing layers 0..L-1."""

    order: list[int]
    encodings: list[dict[str, Tensor]]
    hidden: list[tuple[Tensor, ...]]  # per batch: resid_pre of every layer, [batch, pos, d_model] each
    clean_logits: Tensor  # [n, d_vocab] at the last position, input order


@torch.no_grad()
def cache_prompt_batches(model: LoadedModel, instructions: list[str], batch_size: int = 16) -> PromptBatches:
    """Run the prompts once, keeping every layer's residual stream and the last-position logits."""
    order = _length_sorted(instructions)
    encodings, hidden = [], []
    logits = torch.empty(len(instructions), model.d_vocab)
    for batch in batched(order, batch_size):
        enc = model.tokenize_instructions([instructions[i] for i in batch])
        out = model.hf.model(**enc, position_ids=position_ids(enc["attention_mask"]), output_hidden_states=True)
        encodings.append(enc)
        hidden.append(tuple(h for h in out.hidden_states[: model.n_layers]))
        logits[batch] = model.hf.lm_head(out.last_hidden_state[:, -1]).float().cpu()
    return PromptBatches(order=order, encodings=encodings, hidden=hidden, clean_logits=logits)


@contextlib.contextmanager
def layers_from(hf_model, layer: int, stop: int | None = None) -> Iterator[None]:
    """Temporarily keep only decoder layers `layer..stop-1` (the output of the dropped first ones is supplied as
    `inputs_embeds`; with `stop`, the pass ends after layer stop-1). Passes need `use_cache=False`.

    TransformerBridge has no `start_at_layer` (it delegates the forward pass to Hugging Face), so this swap of
    the layer list is how a pass starts at a layer; hooks stay attached to their blocks."""
    inner = hf_model.model
    full, types = inner.layers, getattr(inner.config, "layer_types", None)
    inner.layers = torch.nn.ModuleList(list(full)[layer:stop])
    if types is not None:
        inner.config.layer_types = types[layer:stop]
    try:
        yield
    finally:
        inner.layers = full
        if types is not None:
            inner.config.layer_types = types


@torch.no_grad()
def last_token_logits_from_layer(model: LoadedModel, batches: PromptBatches, layer: int,
                                 intervention: Intervention = NO_INTERVENTION) -> Tensor:
    """Like `last_token_logits`, for an intervention that changes nothing below `layer`: starts from the
    cached `blocks.{layer}.hook_resid_pre` (equal results, less compute)."""
    result = torch.empty_like(batches.clean_logits)
    for batch, enc, hidden in zip(batched(batches.order, len(batches.encodings[0]["input_ids"])),
                                  batches.encodings, batches.hidden):
        # Hooks first (they attach to layer modules by index), then the shortened layer list.
        with model.hooks(intervention), layers_from(model.hf, layer):
            out = model.hf.model(inputs_embeds=hidden[layer], attention_mask=enc["attention_mask"],
                                 position_ids=position_ids(enc["attention_mask"]), use_cache=False)
        result[batch] = model.hf.lm_head(out.last_hidden_state[:, -1]).float().cpu()
    return result
