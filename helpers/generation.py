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

from helpers.files import pause_point
from helpers.hooks import NO_INTERVENTION, Intervention
from helpers.instructions import check_instructions
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
    """Greedy completions for chat-formatted instructions, in input order (batches in `_length_sorted` order).

    The tokens every prompt shares (system prompt and user header, ~24 of ~40 offline) run once per call and their
    KV cache is copied into each batch. Decoding is our own loop (`generate_with_loop`) when rows stop at their
    end-of-sequence token, because a finished row leaves its batch there, and Hugging Face's `generate`
    (`generate_with_hf`) otherwise: side by side on the same batches, prefix and interventions
    (scripts/bench_generation.py, docs/benchmarks.md) the loop was 4% (no intervention; range over 3 runs −7 to +15%) to
    15% (ablation, +8 to +26%; addition +8 to +17%) faster when stopping at EOS, and 0-4% slower with every row
    running `max_new_tokens`.
    Both give the same tokens (tested). `stop_at_eos=False` always generates `max_new_tokens` (equal work, for
    benchmarks)."""
    if not stop_at_eos:
        return generate_with_hf(model, instructions, intervention, max_new_tokens, batch_size, stop_at_eos=False)
    return generate_with_loop(model, instructions, intervention, max_new_tokens, batch_size, progress, stop_at_eos)


@torch.no_grad()
def generate_with_loop(model: LoadedModel, instructions: list[str], intervention: Intervention = NO_INTERVENTION,
                       max_new_tokens: int = 64, batch_size: int = 16, progress: bool = True,
                       stop_at_eos: bool = True) -> list[str]:
    """`generate`'s own KV-cached greedy loop: the shared prefix runs once and a row that has emitted an
    end-of-sequence token leaves the batch. The intervention's hooks apply to every pass (the shared prefix too). An
    intervention with an `edit` may treat batch rows differently (`gradients.generate_steered` adds one vector per
    row), so it gets neither saving: whole left-padded prompts, every row kept to the end."""
    instructions, ids, shared = _prepared(model, instructions, intervention, max_new_tokens, batch_size)
    rows_alike = intervention.edit is None  # an edit may be a function of the batch row
    out: dict[int, str] = {}
    batches = batched(_length_sorted(instructions), batch_size)
    with model.hooks(intervention):
        prefix = _prefix_cache(model, ids, shared)
        for batch in tqdm(batches, desc="generate", unit="batch", disable=not progress or len(batches) < 2):
            new = _greedy_batch(model, prefix, shared, [ids[i][shared:] for i in batch], max_new_tokens, stop_at_eos,
                                drop_finished=rows_alike)
            for i, tokens in zip(batch, new):
                out[i] = model.tokenizer.decode(tokens, skip_special_tokens=True)
    return [out[i] for i in range(len(instructions))]


@torch.no_grad()
def reference_generate(model: LoadedModel, instructions: list[str], intervention: Intervention = NO_INTERVENTION,
                       max_new_tokens: int = 16) -> list[str]:
    """Hugging Face's own greedy `generate` on one left-padded batch under the same hooks: the reference that
    `generate` is checked against (tests, scripts/check_gpu.py), not for experiments."""
    enc = model.tokenize_instructions(instructions)
    with model.hooks(intervention):
        tokens = model.hf.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                   top_p=None, top_k=None, pad_token_id=model.tokenizer.pad_token_id)
    return model.tokenizer.batch_decode(tokens[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def generate_with_hf(model: LoadedModel, instructions: list[str], intervention: Intervention = NO_INTERVENTION,
                     max_new_tokens: int = 64, batch_size: int = 16, stop_at_eos: bool = True) -> list[str]:
    """`generate`'s batches and shared prefix, with Hugging Face's `generate` doing the decoding: the prefix's KV
    cache is computed once, copied into each batch's `generate` call, and finished rows stay in the batch (HF pads
    them). `scripts/bench_generation.py` times it against `generate_with_loop`."""
    import copy

    instructions, ids, shared = _prepared(model, instructions, intervention, max_new_tokens, batch_size)
    pad, dev, out = model.tokenizer.pad_token_id, model.device, {}
    eos = None if stop_at_eos else -1  # -1: no token ends a row, so every row runs max_new_tokens
    with model.hooks(intervention):
        prefix = _prefix_cache(model, ids, shared)
        for batch in batched(_length_sorted(instructions), batch_size):
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long, device=dev)
            mask = torch.zeros_like(input_ids)
            for row, i in enumerate(batch):  # the prefix at the front, the rest left-padded behind it
                suffix = ids[i][shared:]
                input_ids[row, :shared] = torch.tensor(ids[i][:shared])
                input_ids[row, width - len(suffix):] = torch.tensor(suffix)
                mask[row, :shared] = 1
                mask[row, width - len(suffix):] = 1
            cache = None
            if prefix is not None:
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(len(batch))
            tokens = model.hf.generate(input_ids=input_ids, attention_mask=mask, past_key_values=cache,
                                       max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                                       top_k=None, pad_token_id=pad, **({} if eos is None else {"eos_token_id": eos}))
            for i, row in zip(batch, tokens[:, width:]):
                out[i] = model.tokenizer.decode(row, skip_special_tokens=True)
    return [out[i] for i in range(len(instructions))]


def _prepared(model: LoadedModel, instructions: list[str], intervention: Intervention, max_new_tokens: int,
              batch_size: int) -> tuple[list[str], list[list[int]], int]:
    """What both decoders start from, after checking their arguments: the instructions, each prompt's token ids,
    and how many leading tokens all prompts share (0 for an intervention with an `edit`, which may treat batch rows
    differently, so every row runs its whole prompt)."""
    instructions = check_instructions(instructions)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    intervention.check(model.d_model, model.n_layers)
    ids = _prompt_ids(model, instructions)
    return instructions, ids, (_common_prefix_length(ids) if intervention.edit is None else 0)


def _prompt_ids(model: LoadedModel, instructions: list[str]) -> list[list[int]]:
    """Each instruction's chat-formatted prompt as token ids, unpadded."""
    return [model.tokenizer(model.format_chat(i), add_special_tokens=True)["input_ids"] for i in instructions]


def _prefix_cache(model: LoadedModel, ids: list[list[int]], shared: int):
    """The KV cache of the `shared` tokens every prompt starts with, from one one-row pass under whatever hooks are
    active (None when there are none to share)."""
    if not shared:
        return None
    prefix = torch.tensor([ids[0][:shared]], device=model.device)
    return model.hf.model(input_ids=prefix, use_cache=True).past_key_values


def _common_prefix_length(ids: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least 2 of its own (a pass of length 1 is a generated
    token to `Intervention.prompt_only`)."""
    n = min(len(x) for x in ids) - 2
    first = ids[0]
    for x in ids[1:]:
        n = min(n, next((j for j, (a, b) in enumerate(zip(first, x)) if a != b), n))
    return max(n, 0)


def _eos_ids(model: LoadedModel) -> set[int]:
    eos = model.hf.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return set(eos) | {model.tokenizer.eos_token_id} - {None}


def _after_prefix(model: LoadedModel, prefix, shared: int, suffixes: list[list[int]]):
    """A batch's input after a shared prefix of `shared` tokens: the suffixes left-padded behind the prefix
    (`input_ids` `[n, width]`), the attention mask over prefix and suffix, position ids counted over real tokens
    only, and a copy of the prefix's KV cache (None without a prefix) repeated for each row."""
    import copy

    dev, n, width = model.device, len(suffixes), max(len(s) for s in suffixes)
    input_ids = torch.full((n, width), model.tokenizer.pad_token_id, dtype=torch.long, device=dev)
    mask = torch.zeros(n, shared + width, dtype=torch.long, device=dev)
    mask[:, :shared] = 1
    for row, suffix in enumerate(suffixes):
        input_ids[row, width - len(suffix):] = torch.tensor(suffix, device=dev)
        mask[row, shared + width - len(suffix):] = 1
    cache = None
    if prefix is not None:
        cache = copy.deepcopy(prefix)
        cache.batch_repeat_interleave(n)
    return input_ids, mask, position_ids(mask), cache


def _greedy_batch(model: LoadedModel, prefix, shared: int, suffixes: list[list[int]], max_new_tokens: int,
                  stop_at_eos: bool, drop_finished: bool = True) -> list[list[int]]:
    """Greedy tokens for prompts `prefix + suffix` (prefix already in the KV cache `prefix`, `shared` tokens);
    suffixes are left-padded after the prefix, with positions counted over real tokens only. A row stops at its
    end-of-sequence token (kept, as `generate` decodes without special tokens); with `drop_finished` it also
    leaves the batch, else it runs on unrecorded until every row is done."""
    dev, n = model.device, len(suffixes)
    input_ids, mask, positions, cache = _after_prefix(model, prefix, shared, suffixes)
    result = model.hf(input_ids=input_ids, attention_mask=mask, position_ids=positions[:, shared:],
                      past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache, next_position = result.past_key_values, positions[:, -1] + 1
    eos_ids = _eos_ids(model)
    rows, tokens = torch.arange(n, device=dev), [[] for _ in range(n)]
    done = [False] * n
    for step in range(max_new_tokens):
        pause_point("generate_step")
        token = result.logits[:, -1].argmax(-1)
        for row, t in zip(rows.tolist(), token.tolist()):
            if not done[row]:
                tokens[row].append(t)
                done[row] = stop_at_eos and t in eos_ids
        if step == max_new_tokens - 1 or all(done):
            break
        if drop_finished and any(done[row] for row in rows.tolist()):  # finished rows leave the batch (and cache)
            keep = torch.tensor([i for i, row in enumerate(rows.tolist()) if not done[row]], device=dev)
            cache.batch_select_indices(keep)
            rows, token, mask, next_position = rows[keep], token[keep], mask[keep], next_position[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        result = model.hf(input_ids=token[:, None], attention_mask=mask, position_ids=next_position[:, None],
                          past_key_values=cache, use_cache=True)
        next_position = next_position + 1
    return tokens


@torch.no_grad()
def last_token_logits(model: LoadedModel, instructions: list[str], intervention: Intervention = NO_INTERVENTION,
                      batch_size: int = 16, progress: bool = False, share_prefix: bool = False) -> Tensor:
    """Next-token logits `[n, d_vocab]` at the last prompt position, optionally under an intervention.

    `share_prefix=True` runs the tokens every prompt shares (system turn and user header, ~24 of ~40 offline) once,
    under the intervention, and copies their KV cache into each batch, as `generate` does: the same logits to float
    rounding (tested) for ~40% of the compute. Only for hooks that treat every row and position alike: not with an
    intervention's `edit` (it may be a function of the batch row) nor inside hooks added around this call."""
    if share_prefix and intervention.edit is not None:
        raise ValueError("last_token_logits(share_prefix=True) cannot take an intervention with an edit (it may treat "
                         "batch rows differently): pass share_prefix=False.")
    order = _length_sorted(instructions)
    result = torch.empty(len(instructions), model.d_vocab, dtype=torch.float32)
    ids, shared = None, 0
    if share_prefix:
        instructions = check_instructions(instructions)
        ids = _prompt_ids(model, instructions)
        shared = _common_prefix_length(ids)
    with model.hooks(intervention):
        prefix = _prefix_cache(model, ids, shared)
        for batch in tqdm(batched(order, batch_size), desc="forward", disable=not progress):
            if prefix is None:
                enc = model.tokenize_instructions([instructions[i] for i in batch])
                hidden = model.hf.model(**enc, position_ids=position_ids(enc["attention_mask"])).last_hidden_state
            else:
                suffixes = [ids[i][shared:] for i in batch]
                input_ids, mask, positions, cache = _after_prefix(model, prefix, shared, suffixes)
                hidden = model.hf.model(input_ids=input_ids, attention_mask=mask, position_ids=positions[:, shared:],
                                        past_key_values=cache, use_cache=True).last_hidden_state
            result[batch] = model.unembed(hidden[:, -1, :]).float().cpu()  # the last position only: a cheap unembed
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
        logits[batch] = model.unembed(out.last_hidden_state[:, -1]).float().cpu()
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
        result[batch] = model.unembed(out.last_hidden_state[:, -1]).float().cpu()
    return result
