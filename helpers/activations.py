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

import hashlib
import itertools
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from helpers.corpora import document_separator_id, iter_texts, token_windows
from helpers.files import atomic_write, atomic_write_json, pause_point
from helpers.models import LoadedModel

MANIFEST = "manifest.json"
# Bump when a code change alters what a cache holds for the same settings (2: documents separated by
# <|endoftext|> instead of the chat template's <|im_end|>).
CACHE_FORMAT = 2


class CacheError(RuntimeError):
    """A cache is missing, incomplete, or made for another model or hook."""


# The versions that decide what a cache holds: a cache made with others is cached again, not reused
STALE_KEYS = ("torch", "transformers", "transformer_lens", "tokenizers", "python")


def _versions(corpus: str | None = None, source: str = "offline") -> dict[str, str]:
    """The library versions a cache is made with; for the offline webtext, whose documents include the
    interpreter's own standard-library source, the Python version too."""
    import platform
    from importlib.metadata import version

    out = {"torch": torch.__version__, "transformers": version("transformers"),
           "transformer_lens": version("transformer-lens"), "sae_lens": version("sae-lens"),
           "tokenizers": version("tokenizers")}
    if corpus is not None and corpus.startswith("webtext") and source == "offline":
        out["python"] = platform.python_version()
    return out


def stale_versions(have: dict[str, str], want: dict[str, str]) -> dict[str, tuple[str, str]]:
    """`{library: (cached with, now)}` for each of `STALE_KEYS` that differs (or was not recorded)."""
    return {k: (have.get(k, "unrecorded"), want[k]) for k in STALE_KEYS if k in want and have.get(k) != want[k]}


def hook_layer(hook_name: str, n_layers: int, model_name: str = "the model") -> int:
    """Layer index of a `blocks.L.hook_resid_pre` hook, checked against the model."""
    parts = hook_name.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or parts[2] != "hook_resid_pre" or not parts[1].isdigit():
        raise ValueError(f"Only residual-stream hooks 'blocks.L.hook_resid_pre' can be cached, got {hook_name!r}.")
    from helpers.hooks import check_layer

    return check_layer(int(parts[1]), n_layers, f"{hook_name} ({model_name})")


def training_token_mask(norms: torch.Tensor, drop_first: bool = True,
                        outlier_factor: float | None = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Which positions of a `[batch, pos]` window batch the SAEs train on, given the residual norms: all but
    the first (`drop_first`: Qwen's massive first-token activation) and those whose norm exceeds
    `outlier_factor` x the median norm of the remaining positions. Returns (keep, outliers)."""
    keep = torch.ones_like(norms, dtype=torch.bool)
    if drop_first:
        keep[:, 0] = False
    outliers = torch.zeros_like(keep)
    if outlier_factor is not None:
        outliers = keep & (norms > outlier_factor * norms[keep].median())
        keep &= ~outliers
    return keep, outliers


def cache_settings(cfg, corpus: str, split: str) -> dict:
    """The configuration fields that decide what a cache of `corpus`/`split` holds."""
    source = cfg.webtext_source if corpus.startswith("webtext") else cfg.chat_source
    return {"format": CACHE_FORMAT, "model": cfg.model, "hook_name": cfg.sae_hook, "corpus": corpus, "split": split,
            "source": source, "context_size": cfg.cache_context_size, "dtype": cfg.cache_dtype,
            "target_tokens": cfg.cache_tokens if split == "train" else cfg.cache_heldout_tokens,
            "batch_windows": cfg.cache_batch_windows, "drop_first": cfg.drop_first_token,
            "outlier_factor": cfg.outlier_factor, "system_prompt": cfg.system_prompt, "seed": cfg.seed}


def cache_dir(cfg, corpus: str, split: str) -> Path:
    """`runs/<preset>/activations/<corpus>/<split>-<key>/`: the key is a hash of `cache_settings`, so a cache
    made with other settings (e.g. `outlier_factor=None`) lives in its own folder instead of clashing."""
    key = hashlib.sha256(json.dumps(cache_settings(cfg, corpus, split), sort_keys=True).encode()).hexdigest()[:8]
    return cfg.run_dir / "activations" / corpus / f"{split}-{key}"


def cache_from_config(model: LoadedModel, cfg, corpus: str, split: str, **kwargs) -> "Manifest":
    """`cache_activations` for `corpus`/`split` with every setting from the configuration, into `cache_dir`."""
    s = cache_settings(cfg, corpus, split)
    return cache_activations(model, corpus, cache_dir(cfg, corpus, split), s["hook_name"], s["target_tokens"],
                             context_size=s["context_size"], batch_windows=s["batch_windows"],
                             shard_tokens=cfg.cache_shard_tokens, split=split, source=s["source"], dtype=s["dtype"],
                             drop_first=s["drop_first"], outlier_factor=s["outlier_factor"], seed=s["seed"], **kwargs)


def continue_cache(smaller: Path, folder: Path, n_tokens: int) -> bool:
    """Start a cache of `n_tokens` in `folder` from the complete, smaller cache in `smaller` made with the same
    settings otherwise: its shards are linked (copied where the file system has no links) and its manifest, retargeted
    to `n_tokens` and marked incomplete, is written last. `cache_activations` then resumes after its windows, so the
    result holds the tokens, in the order, that caching `n_tokens` from scratch would (shards cut elsewhere). Nothing
    is done (False) when `folder` already has a manifest or `smaller` is incomplete or not smaller."""
    smaller, folder = Path(smaller), Path(folder)
    if (folder / MANIFEST).exists() or not (smaller / MANIFEST).exists():
        return False
    have = read_manifest(smaller)
    if not have.complete or have.tokens >= n_tokens:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    for s in have.shards:
        target = folder / s["file"]
        target.unlink(missing_ok=True)  # a copy a killed run left half-written
        try:
            os.link(smaller / s["file"], target)
        except OSError:
            shutil.copyfile(smaller / s["file"], target)
    atomic_write_json(folder / MANIFEST, asdict(replace(have, target_tokens=n_tokens, complete=False,
                                                        cache_id=uuid.uuid4().hex)))
    return True


def open_cache(cfg, model_name: str, corpus: str, split: str) -> "ActivationCache":
    """The complete cache notebook 01 wrote for this configuration (a clear error names notebook 01 if not)."""
    return ActivationCache(cache_dir(cfg, corpus, split), model_name, cfg.sae_hook)


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
    separator_id: int = -1  # the token between documents (document_separator_id)
    format: int = CACHE_FORMAT
    shards: list[dict] = field(default_factory=list)  # {"file", "tokens", "windows"}
    windows_done: int = 0
    tokens: int = 0
    dropped_first: int = 0
    dropped_outliers: int = 0
    complete: bool = False
    seconds: float = 0.0
    versions: dict = field(default_factory=_versions)
    cache_id: str | None = None  # new for every cache made (None: made before ids), so SAEs trained on it know it

    def identity(self) -> dict:
        """The fields that must match for a cache to be resumed or reused."""
        keys = ("model", "hook_name", "corpus", "split", "source", "context_size", "dtype", "target_tokens",
                "batch_windows", "drop_first", "outlier_factor", "system_prompt", "seed", "separator_id", "format")
        return {k: getattr(self, k) for k in keys}


def read_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise CacheError(f"No activation cache at {folder} (no {MANIFEST}). Run notebook 01 (cache_activations) first.")
    try:
        return Manifest(**json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise CacheError(f"{path} is damaged ({type(e).__name__}: {e}). Delete {folder} and rerun notebook 01 "
                         "to rebuild the cache.") from e


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
    for arg, value, least in (("n_tokens", n_tokens, 1), ("context_size", context_size, 2),
                              ("batch_windows", batch_windows, 1), ("shard_tokens", shard_tokens, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"cache_activations: {arg} must be an integer >= {least}, got {value!r}.")
    if drop_first and context_size < 3:
        raise ValueError(f"cache_activations: context_size={context_size} keeps no token once the first is dropped "
                         "and the separator opens each window; use context_size >= 3.")
    if outlier_factor is not None and (not isinstance(outlier_factor, (int, float)) or outlier_factor <= 1):
        raise ValueError(f"cache_activations: outlier_factor must be None or a number > 1 (a multiple of the median "
                         f"norm; 10 drops only massive activations), got {outlier_factor!r}.")
    if dtype not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"cache_activations: dtype must be float16, bfloat16 or float32, got {dtype!r}.")
    want = Manifest(model=model.name, hook_name=hook_name, corpus=corpus, split=split, source=source,
                    d_model=model.d_model, context_size=context_size, dtype=dtype, target_tokens=n_tokens,
                    batch_windows=batch_windows, drop_first=drop_first, outlier_factor=outlier_factor,
                    system_prompt=model.system_prompt, seed=seed,
                    separator_id=document_separator_id(model.tokenizer), versions=_versions(corpus, source),
                    cache_id=uuid.uuid4().hex)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = want
    if (folder / MANIFEST).exists():
        have = read_manifest(folder)
        if have.identity() != want.identity():
            diff = {k: (v, want.identity()[k]) for k, v in have.identity().items() if v != want.identity()[k]}
            raise CacheError(f"{folder} holds a cache made with other settings {diff} (cached, requested). "
                             "Delete the folder or choose another one.")
        stale = stale_versions(have.versions, want.versions)
        if stale:  # made with other libraries (or another Python, for the offline webtext): not reused
            print(f"{folder}: made with {stale} (cached with, now); caching it again")
            (folder / MANIFEST).unlink()  # listed shards become strays, removed below
        elif have.complete:
            return have
        else:
            manifest = have
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
        keep, outliers = training_token_mask(resid.norm(dim=-1), drop_first, outlier_factor)
        manifest.dropped_outliers += int(outliers.sum())
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
    atomic_write_json(folder / MANIFEST, asdict(manifest))
    return manifest


def _flush(folder: Path, manifest: Manifest, acts: list, ids: list, pos: list, n_windows: int,
           seconds: float) -> None:
    name = f"shard_{len(manifest.shards):05d}.safetensors"
    tensors = {"activations": torch.cat(acts).contiguous(), "token_ids": torch.cat(ids).contiguous(),
               "positions": torch.cat(pos).contiguous()}
    atomic_write(folder / name, lambda tmp: save_file(tensors, str(tmp)))
    n = len(tensors["token_ids"])
    manifest.shards.append({"file": name, "tokens": n, "windows": n_windows})
    manifest.windows_done += n_windows
    manifest.tokens += n
    manifest.seconds = seconds
    atomic_write_json(folder / MANIFEST, asdict(manifest))
    pause_point("cache_shard")


class ActivationCache:
    """A complete cache on disk, checked against the model and hook that will use it."""

    def __init__(self, folder: str | Path, model_name: str | None = None, hook_name: str | None = None):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        m = self.manifest
        if not m.shards or m.tokens <= 0:
            raise CacheError(f"The cache at {self.folder} holds no tokens. Delete it and rerun notebook 01.")
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
        entry = self.manifest.shards[i]
        path = self.folder / entry["file"]
        try:
            data = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
            raise CacheError(f"Shard {path} cannot be read ({e}). Delete {self.folder} and rerun notebook 01 to "
                             "rebuild the cache.") from e
        if len(data["token_ids"]) > entry["tokens"]:  # the last shard of a `head`
            data = {k: v[:entry["tokens"]] for k, v in data.items()}
        return data

    def head(self, n_tokens: int) -> "ActivationCache":
        """The first `n_tokens` kept tokens of this cache (whole shards, the last one cut) as a cache of its own: for
        training on fewer unique tokens from one cache (the scale study's token axis). Its `n_tokens` differs, so
        `saes.training_key` tells SAEs trained on different heads apart."""
        import copy

        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or not 0 < n_tokens <= self.n_tokens:
            raise ValueError(f"head: n_tokens must be an integer in [1, {self.n_tokens:,}] (the cache at {self.folder} "
                             f"holds {self.n_tokens:,} tokens), got {n_tokens!r}; cache more tokens for a longer head.")
        shards, left = [], n_tokens
        for s in self.manifest.shards:
            shards.append({**s, "tokens": min(s["tokens"], left)})
            left -= shards[-1]["tokens"]
            if not left:
                break
        view = copy.copy(self)
        view.manifest = replace(self.manifest, shards=shards, tokens=n_tokens)
        return view

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
        """Endless shuffled `[batch_size, d_model]` float32 batches, mixing `mix_shards` shards at a time.
        A batch larger than what `mix_shards` shards hold (or than the cache) is an error, not an endless loop."""
        n_shards = len(self.manifest.shards)
        smallest = sum(sorted(s["tokens"] for s in self.manifest.shards)[:mix_shards]) if n_shards else 0
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if batch_size > smallest:
            raise CacheError(f"The cache at {self.folder} holds {self.n_tokens:,} tokens in {n_shards} shards; a batch "
                             f"of {batch_size:,} does not fit in {mix_shards} shards ({smallest:,} tokens). Use a "
                             "smaller train_batch_size_tokens or cache more tokens.")
        return self._batches(batch_size, seed, mix_shards)

    def _batches(self, batch_size: int, seed: int, mix_shards: int) -> Iterator[torch.Tensor]:
        rng = torch.Generator().manual_seed(seed)
        n_shards = len(self.manifest.shards)
        while True:
            order = torch.randperm(n_shards, generator=rng).tolist()
            for g in range(0, n_shards, mix_shards):
                acts = torch.cat([self.shard(i)["activations"] for i in order[g:g + mix_shards]]).float()
                perm = torch.randperm(len(acts), generator=rng)
                for b in range(0, len(acts) - batch_size + 1, batch_size):
                    pause_point("sae_batch")
                    yield acts[perm[b:b + batch_size]]


class MixedCache:
    """Several complete caches of the same model and hook, mixed in equal shares: every batch takes
    batch_size / n tokens from each (for an SAE trained on a 50/50 mixture of webtext and chat)."""

    def __init__(self, caches: list[ActivationCache]):
        if len(caches) < 2:
            raise ValueError("MixedCache needs at least two caches.")
        first = caches[0].manifest
        for c in caches[1:]:
            m = c.manifest
            if (m.model, m.hook_name, m.d_model) != (first.model, first.hook_name, first.d_model):
                raise CacheError(f"Cannot mix {c.folder} ({m.model}, {m.hook_name}) with {caches[0].folder} "
                                 f"({first.model}, {first.hook_name}).")
        self.caches = caches
        self.manifest = first
        self.folder = [c.folder for c in caches]

    @property
    def n_tokens(self) -> int:
        return sum(c.n_tokens for c in self.caches)

    def data_provider(self, batch_size: int, seed: int = 0, mix_shards: int = 4) -> Iterator[torch.Tensor]:
        n = len(self.caches)
        if batch_size % n:
            raise ValueError(f"batch_size {batch_size} must be divisible by the number of mixed caches ({n}).")
        providers = [c.data_provider(batch_size // n, seed=seed + i, mix_shards=mix_shards)
                     for i, c in enumerate(self.caches)]
        return self._mixed(providers, seed)

    @staticmethod
    def _mixed(providers: list, seed: int) -> Iterator[torch.Tensor]:
        rng = torch.Generator().manual_seed(seed)
        while True:
            batch = torch.cat([next(p) for p in providers])
            yield batch[torch.randperm(len(batch), generator=rng)]


def split_heldout(data: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Cut `ActivationCache.load_all()` output into two parts by alternating windows (even windows to tune
    on, e.g. the L1 coefficient; odd windows to report on), so reported numbers never saw the tuning and both
    parts mix the corpus's documents alike. (Cutting into first and second halves put different documents in
    each: the offline webtext SAE's L0 was 39.7 on one half and 46.1 on the other.)"""
    pos = data["positions"]
    starts = torch.cat([torch.ones(1, dtype=torch.bool), pos[1:] <= pos[:-1]])  # first token of each window
    window = torch.cumsum(starts.long(), 0) - 1
    tune = window % 2 == 0
    if tune.all() or not tune.any():
        raise CacheError(f"Cannot split a held-out cache of {int(window[-1]) + 1} window(s) into two parts; "
                         "cache more held-out tokens.")
    return {k: v[tune] for k, v in data.items()}, {k: v[~tune] for k, v in data.items()}
