"""Benchmark: caching throughput vs a plain forward pass to the same layer, side by side.

Run: `python scripts/bench_caching.py [--preset offline] [--windows 64]`
Both runs process the same token windows (webtext), batch by batch, stopping at the SAE hook;
the cache additionally selects kept tokens, converts to float16 and writes shards.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch

from helpers.activations import cache_activations, hook_layer
from helpers.config import get_config
from helpers.corpora import iter_texts, token_windows
from helpers.models import load_from_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="offline")
    ap.add_argument("--windows", type=int, default=64)
    args = ap.parse_args()
    cfg = get_config(args.preset)
    model = load_from_config(cfg)
    layer = hook_layer(cfg.sae_hook, model.n_layers, model.name)
    ctx, bw = cfg.cache_context_size, cfg.cache_batch_windows
    windows = list(itertools.islice(token_windows(iter_texts("webtext", model.format_messages), model.tokenizer, ctx),
                                    args.windows))
    with torch.no_grad():
        model.tl(torch.tensor(windows[:bw]), stop_at_layer=layer)  # warm-up
        start = time.perf_counter()
        for b in range(0, len(windows), bw):
            model.tl(torch.tensor(windows[b:b + bw]), stop_at_layer=layer)
        plain_s = time.perf_counter() - start
    n_tokens = len(windows) * ctx
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        # Small shards so that writing is part of the measured work (the last partial shard is not written).
        m = cache_activations(model, "webtext", Path(tmp), cfg.sae_hook, n_tokens=10**12, context_size=ctx,
                              batch_windows=bw, shard_tokens=bw * ctx // 2, dtype=cfg.cache_dtype,
                              drop_first=cfg.drop_first_token, outlier_factor=cfg.outlier_factor,
                              max_batches=len(windows) // bw)
        cache_s = time.perf_counter() - start
    report = {"model": model.name, "hook": cfg.sae_hook, "windows": len(windows), "context_size": ctx,
              "batch_windows": bw, "threads": torch.get_num_threads(),
              "plain_forward_tok_per_s": n_tokens / plain_s, "caching_tok_per_s": n_tokens / cache_s,
              "caching_kept_tok_per_s": m.tokens / cache_s, "ratio": plain_s / cache_s}
    print(json.dumps(report, indent=1))
    print(f"caching runs at {report['ratio']:.0%} of a plain forward pass to layer {layer}")


if __name__ == "__main__":
    main()
