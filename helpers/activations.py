"""A resumable, sharded on-disk cache of residual-stream activations, for training SAEs without the model.

Layout of `runs/<preset>/activations/<corpus>/<split>/`:
- `shard_00000.safetensors` ... : `activations` `[n, d_model]` (float16 by default), `token_ids` `[n]` (int32)
  and `positions` `[n]` (int32, position in its window)
- `manifest.json`: model, hook, corpus, split, tokens, dtype, shards, what was dropped, library versions,
  and `complete`.

Every file is written under a temporary name and renamed, and the manifest lists a shard only
after the shard is on disk, so a killed run never leaves a shard that reads as complete but is
not; restarting skips the windows already cached and ends with the same content as an
uninterrupted run (shards are cut at batch boundaries of a deterministic window stream).

The cache feeds sae_lens' own `SAETrainer` through `ActivationCache.data_provider`, an
iterator of shuffled `[batch, d_model]` float32 batches: the `DataProvider` its trainer takes.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from helpers.corpora import iter_texts, token_windows
from helpers.models import LoadedModel

MANIFEST = "manifest.json"


class CacheError(RuntimeError):
    """A cache is missing, incomplete, or made for another model or hook."""


def _versions() -> dict[str, str]:
    import sae_lens
    import transformer_lens
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "transformer_lens": getattr(transformer_lens, "__version__", "?"), "sae_lens": sae_lens.__version__}


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def hook_layer(hook_name: str, n_layers: int, model_name: str = "the model") -> int:
    """Layer index of a `blocks.L.hook_resid_pre` hook, checked against the model."""
    parts = hook_name.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or parts[2] != "hook_resid_pre" or not parts[1].isdigit():
        raise ValueError(f"Only residual-stream hooks 'blocks.L.hook_resid_pre' can be cached, got {hook_name!r}.")
    layer = int(parts[1])
    if layer >= n_layers:
        raise ValueError(f"{hook_name}: layer {layer} is out of range for {model_name} ({n_layers} layers).")
    return layer


@dataclass
class Manifest:
    model: str
    hook_name: str
    corpus: str
    split: str
    source: str
    d_model: int
    context_size: int
    dtype: str
    target_tokens: int
    batch_windows: int
    drop_first: bool
    outlier_factor: float | None
    system_prompt: str | None
    seed: int
    shards: list[dict] = field(default_factory=list)  # {"file", "tokens", "windows"}
    windows_done: int = 0
    tokens: int = 0
    dropped_first: int = 0
    dropped_outliers: int = 0
    complete: bool = False
    seconds: float = 0.0
    versions: dict = field(default_factory=_versions)

    def identity(self) -> dict:
        """The fields that must match for a cache to be resumed or reused."""
        keys = ("model", "hook_name", "corpus", "split", "source", "context_size", "dtype", "target_tokens",
                "batch_windows", "drop_first", "outlier_factor", "system_prompt", "seed")
        return {k: getattr(self, k) for k in keys}


def read_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise CacheError(f"No activation cache at {folder} (no {MANIFEST}). Run notebook 01 (cache_activations) first.")
    return Manifest(**json.loads(path.read_text()))


@torch.no_grad()
def cache_activations(model: LoadedModel, corpus: str, folder: Path, hook_name: str, n_tokens: int,
                      context_size: int = 256, batch_windows: int = 8, shard_tokens: int = 65_536,
                      split: str = "train", source: str = "offline", dtype: str = "float16",
                      drop_first: bool = True, outlier_factor: float | None = 10.0, seed: int = 0,
                      max_batches: int | None = None) -> Manifest:
    """Cache `hook_name` activations for about `n_tokens` kept tokens of `corpus` into `folder` (resumable).

    Kept positions: all but the first of each window (`drop_first`: it carries Qwen's massive
    activation, norm ~1e3) and any token whose norm exceeds `outlier_factor` x the batch median
    (the few newline/comma tokens with norms of 300-400 against a median of ~20). Padding never
    occurs: windows are full. `max_batches` stops early (for tests that simulate a crash).
    """
    folder = Path(folder)
    layer = hook_layer(hook_name, model.n_layers, model.name)
    want = Manifest(model=model.name, hook_name=hook_name, corpus=corpus, split=split, source=source,
                    d_model=model.d_model, context_size=context_size, dtype=dtype, target_tokens=n_tokens,
                    batch_windows=batch_windows, drop_first=drop_first, outlier_factor=outlier_factor,
                    system_prompt=model.system_prompt, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / MANIFEST).exists():
        have = read_manifest(folder)
        if have.identity() != want.identity():
            diff = {k: (v, want.identity()[k]) for k, v in have.identity().items() if v != want.identity()[k]}
            raise CacheError(f"{folder} holds a cache made with other settings {diff} (cached, requested). "
                             "Delete the folder or choose another one.")
        if have.complete:
            return have
        manifest = have
    else:
        manifest = want
    listed = {s["file"] for s in manifest.shards}
    for stray in folder.glob("shard_*"):
        if stray.name not in listed:  # a shard written after the last manifest update, or a temp file
            stray.unlink()
    torch_dtype = getattr(torch, dtype)
    windows = token_windows(iter_texts(corpus, model.format_messages, source=source, split=split, seed=seed),
                            model.tokenizer, context_size)
    windows = itertools.islice(windows, manifest.windows_done, None)
    buf_acts: list[torch.Tensor] = []
    buf_ids: list[torch.Tensor] = []
    buf_pos: list[torch.Tensor] = []
    buf_windows = 0
    start = time.perf_counter() - manifest.seconds
    bar = tqdm(total=n_tokens, initial=manifest.tokens, desc=f"caching {corpus}/{split}", unit="tok",
               unit_scale=True)
    batches = 0
    while manifest.tokens + sum(len(x) for x in buf_ids) < n_tokens:
        batch = list(itertools.islice(windows, batch_windows))
        if not batch:
            break
        ids = torch.tensor(batch, device=model.device)
        resid = model.tl(ids, stop_at_layer=layer)  # = blocks.{layer}.hook_resid_pre
        keep = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
        if drop_first:
            keep[:, 0] = False
        norms = resid.norm(dim=-1)
        if outlier_factor is not None:
            outliers = keep & (norms > outlier_factor * norms[keep].median())
            manifest.dropped_outliers += int(outliers.sum())
            keep &= ~outliers
        manifest.dropped_first += len(batch) if drop_first else 0
        buf_acts.append(resid[keep].to(torch_dtype).cpu())
        buf_ids.append(ids[keep].to(torch.int32).cpu())
        buf_pos.append(torch.arange(ids.shape[1], device=ids.device).expand_as(ids)[keep].to(torch.int32).cpu())
        buf_windows += len(batch)
        bar.update(int(keep.sum()))
        batches += 1
        buffered = sum(len(x) for x in buf_ids)
        if buffered >= shard_tokens or manifest.tokens + buffered >= n_tokens:
            _flush(folder, manifest, buf_acts, buf_ids, buf_pos, buf_windows, time.perf_counter() - start)
            buf_acts, buf_ids, buf_pos, buf_windows = [], [], [], 0
        if max_batches is not None and batches >= max_batches:
            bar.close()
            return manifest  # simulated interruption: the buffer since the last shard is lost, as in a crash
    if buf_ids:
        _flush(folder, manifest, buf_acts, buf_ids, buf_pos, buf_windows, time.perf_counter() - start)
    bar.close()
    manifest.complete = True
    manifest.seconds = time.perf_counter() - start
    _write_json_atomic(folder / MANIFEST, asdict(manifest))
    return manifest


def _flush(folder: Path, manifest: Manifest, acts: list, ids: list, pos: list, n_windows: int,
           seconds: float) -> None:
    name = f"shard_{len(manifest.shards):05d}.safetensors"
    tmp = folder / (name + ".tmp")
    tensors = {"activations": torch.cat(acts).contiguous(), "token_ids": torch.cat(ids).contiguous(),
               "positions": torch.cat(pos).contiguous()}
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / name)
    n = len(tensors["token_ids"])
    manifest.shards.append({"file": name, "tokens": n, "windows": n_windows})
    manifest.windows_done += n_windows
    manifest.tokens += n
    manifest.seconds = seconds
    _write_json_atomic(folder / MANIFEST, asdict(manifest))


class ActivationCache:
    """A complete cache on disk, checked against the model and hook that will use it."""

    def __init__(self, folder: str | Path, model_name: str | None = None, hook_name: str | None = None):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        m = self.manifest
        if not m.complete:
            raise CacheError(f"The cache at {self.folder} is incomplete ({m.tokens:,} of {m.target_tokens:,} tokens): "
                             "rerun the caching step; it resumes where it stopped.")
        if model_name is not None and m.model != model_name:
            raise CacheError(f"The cache at {self.folder} was made with model {m.model!r}, not {model_name!r}. "
                             "Cache activations for this model first.")
        if hook_name is not None and m.hook_name != hook_name:
            raise CacheError(f"The cache at {self.folder} holds {m.hook_name!r}, not {hook_name!r}.")

    @property
    def n_tokens(self) -> int:
        return self.manifest.tokens

    def shard(self, i: int) -> dict[str, torch.Tensor]:
        return load_file(str(self.folder / self.manifest.shards[i]["file"]))

    def load_all(self, max_tokens: int | None = None) -> dict[str, torch.Tensor]:
        """All `activations` (float32), `token_ids` and `positions`, up to `max_tokens`."""
        parts: dict[str, list[torch.Tensor]] = {"activations": [], "token_ids": [], "positions": []}
        n = 0
        for i in range(len(self.manifest.shards)):
            s = self.shard(i)
            for k in parts:
                parts[k].append(s[k].float() if k == "activations" else s[k])
            n += len(s["token_ids"])
            if max_tokens is not None and n >= max_tokens:
                break
        return {k: torch.cat(v)[:max_tokens] for k, v in parts.items()}

    def data_provider(self, batch_size: int, seed: int = 0, mix_shards: int = 4) -> Iterator[torch.Tensor]:
        """Endless shuffled `[batch_size, d_model]` float32 batches, mixing `mix_shards` shards at a time."""
        rng = torch.Generator().manual_seed(seed)
        n_shards = len(self.manifest.shards)
        while True:
            order = torch.randperm(n_shards, generator=rng).tolist()
            for g in range(0, n_shards, mix_shards):
                acts = torch.cat([self.shard(i)["activations"] for i in order[g:g + mix_shards]]).float()
                perm = torch.randperm(len(acts), generator=rng)
                for b in range(0, len(acts) - batch_size + 1, batch_size):
                    yield acts[perm[b:b + batch_size]]
