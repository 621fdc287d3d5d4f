"""Pilot SAE run: train on all but the last shard of a cache, report L0 / explained variance / dead latents
on the last shard. Used to choose the offline preset's learning rate, L1 warm-up and starting coefficient.

    python scripts/pilot_sae.py runs/offline/activations/webtext/train --tokens 800000 --l1 5 --lr 1e-3 --warm-up 0.05
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

from helpers.activations import ActivationCache  # noqa: E402
from helpers.config import get_config  # noqa: E402
from helpers.saes import reconstruction_stats, train_sae  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", type=Path, help="a complete activation cache folder (two shards or more)")
    ap.add_argument("--preset", default="offline")
    ap.add_argument("--tokens", type=int, default=300_000)
    ap.add_argument("--l1", type=float, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--warm-up", type=float, default=0.0, help="L1 warm-up as a share of training")
    args = ap.parse_args()
    cache = ActivationCache(args.cache)  # refuses an incomplete cache
    shards = cache.manifest.shards
    if len(shards) < 2:
        raise SystemExit(f"{args.cache} has fewer than two shards; cache more tokens in notebook 01 first.")
    heldout = cache.shard(len(shards) - 1)["activations"].float()
    cache.manifest = replace(cache.manifest, shards=shards[:-1], tokens=sum(s["tokens"] for s in shards[:-1]))
    sae_cfg = replace(get_config(args.preset).sae, l1_coefficient=args.l1, lr=args.lr,
                      l1_warm_up_fraction=args.warm_up, training_tokens=args.tokens)
    sae, _, seconds = train_sae(cache, sae_cfg)
    stats = reconstruction_stats(sae, heldout)
    print(json.dumps({"tokens": args.tokens, "l1": args.l1, "lr": args.lr, "warm_up": args.warm_up,
                      "seconds": round(seconds, 1), "l0": round(stats.l0, 1),
                      "explained_variance": round(stats.explained_variance, 3),
                      "dead_fraction": round(stats.dead_fraction, 3)}))


if __name__ == "__main__":
    main()
