"""Benchmark: SAE training from the activation cache vs sae_lens' runner with the model in the loop.

Run: `python scripts/bench_sae_training.py [--preset offline] [--tokens 65536]`
Same SAE config (the preset's, with `--tokens` training tokens), same hook, same corpus (webtext).
The cache must exist (notebook 01, or `--make-cache` builds a small one first).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from helpers.activations import ActivationCache, cache_activations  # noqa: E402
from helpers.config import get_config  # noqa: E402
from helpers.corpora import iter_texts, token_windows  # noqa: E402
from helpers.models import load_from_config  # noqa: E402
from helpers.saes import train_sae, training_sae  # noqa: E402


def runner_with_model(model, cfg, sae_cfg, tokens: int, out: Path) -> float:
    """sae_lens' LanguageModelSAETrainingRunner, the model producing activations on the fly."""
    import datasets
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
    from sae_lens.config import LoggingConfig

    ctx = cfg.cache_context_size
    n_windows = tokens // ctx + 64
    windows = list(itertools.islice(token_windows(iter_texts("webtext", model.format_messages), model.tokenizer, ctx),
                                    n_windows))
    dataset = datasets.Dataset.from_dict({"input_ids": windows})
    sae = training_sae(sae_cfg, model.d_model, cfg.sae_hook, model.name, ctx)
    batch = sae_cfg.train_batch_size_tokens
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=sae.cfg, model_name=model.name, hook_name=cfg.sae_hook, dataset_path="override",
        is_dataset_tokenized=True, streaming=False, context_size=ctx, prepend_bos=False,
        training_tokens=tokens, train_batch_size_tokens=batch, store_batch_size_prompts=cfg.cache_batch_windows,
        n_batches_in_buffer=max(4, 2 * -(-batch // ctx)), lr=sae_cfg.lr,  # buffer * ctx must cover a batch
        n_batches_for_norm_estimate=2, device="cpu", dtype="float32", seqpos_slice=(1, None),
        logger=LoggingConfig(log_to_wandb=False), output_path=str(out), checkpoint_path=str(out / "ckpt"),
        n_eval_batches=0, verbose=False)
    start = time.perf_counter()
    LanguageModelSAETrainingRunner(runner_cfg, override_dataset=dataset, override_model=model.tl).run()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="offline")
    ap.add_argument("--tokens", type=int, default=65_536)
    args = ap.parse_args()
    cfg = get_config(args.preset)
    model = load_from_config(cfg)
    sae_cfg = replace(cfg.sae, training_tokens=args.tokens)
    with tempfile.TemporaryDirectory() as tmp:
        folder = cfg.run_dir / "activations" / "webtext" / "train"
        if not (folder / "manifest.json").exists():
            folder = Path(tmp) / "cache"
            cache_activations(model, "webtext", folder, cfg.sae_hook, n_tokens=args.tokens,
                              context_size=cfg.cache_context_size, batch_windows=cfg.cache_batch_windows)
        cache = ActivationCache(folder, model.name, cfg.sae_hook)
        _, _, cached_s = train_sae(cache, sae_cfg, n_batches_for_norm_estimate=2)
        live_s = runner_with_model(model, cfg, sae_cfg, args.tokens, Path(tmp) / "runner")
    report = {"model": model.name, "tokens": args.tokens, "d_sae": sae_cfg.d_sae,
              "batch": sae_cfg.train_batch_size_tokens, "threads": torch.get_num_threads(),
              "from_cache_s": cached_s, "runner_with_model_s": live_s,
              "from_cache_tok_per_s": args.tokens / cached_s, "runner_tok_per_s": args.tokens / live_s,
              "speedup": live_s / cached_s}
    print(json.dumps(report, indent=1))
    print(f"training from the cache is {report['speedup']:.1f}x faster per token")


if __name__ == "__main__":
    main()
