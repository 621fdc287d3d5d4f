"""Benchmark: steered generation (ablation at every layer + activation addition) vs plain HF `generate`.

Run: `python scripts/bench_generation.py [--preset offline] [--batch-size 16] [--new-tokens 64]`.
Every condition generates exactly `new_tokens` tokens per prompt, so the work is equal.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from helpers.config import get_config
from helpers.generation import generate
from helpers.hooks import NO_INTERVENTION, Intervention
from helpers.models import load_from_config

PROMPTS = [
    "Write a short poem about the sea.", "Explain how a bicycle gear works.", "List three uses of vinegar.",
    "Describe the water cycle for a child.", "Give me a recipe for pancakes.", "What is a prime number?",
    "Summarise the plot of Hamlet.", "How do I sort a list in Python?", "Name five European capitals.",
    "Why is the sky blue?", "Suggest a name for a bakery.", "What does a compiler do?",
    "Explain photosynthesis briefly.", "Write a haiku about autumn.", "How do vaccines work?",
    "Give tips for a job interview.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="offline")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = get_config(args.preset)
    model = load_from_config(cfg)
    prompts = (PROMPTS * (args.batch_size // len(PROMPTS) + 1))[: args.batch_size]
    torch.manual_seed(0)
    direction = torch.randn(model.d_model)
    conditions = {
        "plain": NO_INTERVENTION,
        "ablation (all layers)": Intervention(ablate=direction),
        "addition (layer 12)": Intervention(add=direction, add_layer=12, coeff=1.0),
    }
    generate(model, prompts[:2], max_new_tokens=4, batch_size=2, progress=False)  # warm-up
    results = {}
    for name, intervention in conditions.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            generate(model, prompts, intervention, max_new_tokens=args.new_tokens, batch_size=args.batch_size,
                     progress=False, stop_at_eos=False)
            times.append(time.perf_counter() - start)
        best = min(times)
        results[name] = {"seconds": best, "tokens_per_s": args.batch_size * args.new_tokens / best}
    plain = results["plain"]["tokens_per_s"]
    for name, r in results.items():
        r["relative_to_plain"] = r["tokens_per_s"] / plain
        print(f"{name:24s} {r['tokens_per_s']:7.1f} tok/s  ({r['relative_to_plain']:.0%} of plain)")
    print(json.dumps({"model": model.name, "batch_size": args.batch_size, "new_tokens": args.new_tokens,
                      "threads": torch.get_num_threads(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
