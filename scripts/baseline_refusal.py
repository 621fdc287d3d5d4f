"""Baseline (no intervention) substring refusal rate on instruction files or our own splits.

Run: `python scripts/baseline_refusal.py --harmful harmbench_val.json --harmless alpaca_val.json --n-harmless 64`
with any local JSON files `[{"instruction", "category"}]` (e.g. HarmBench's and Alpaca's validation splits).
Without paths it uses our own val splits. Writes runs/<preset>/baseline_refusal.json.
"""

from __future__ import annotations

import argparse
import json
import time

from helpers.config import get_config
from helpers.generation import generate
from helpers.instructions import instructions_only, load_instructions
from helpers.judges import refusal_rate
from helpers.models import load_from_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline")
    ap.add_argument("--harmful", help="JSON instruction file (default: our harmful val split)")
    ap.add_argument("--harmless", help="JSON instruction file (default: our harmless val split)")
    ap.add_argument("--n-harmful", type=int)
    ap.add_argument("--n-harmless", type=int)
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--system-prompt", choices=["preset", "none", "default"], default="preset",
                    help="the chat template's system turn: the preset's choice, none, or the template's default")
    args = ap.parse_args()
    cfg = get_config(args.preset)
    if args.system_prompt != "preset":
        cfg = cfg.replace(system_prompt=None if args.system_prompt == "none" else "default")
    model = load_from_config(cfg)
    max_new = args.max_new_tokens or cfg.max_new_tokens
    report = {"model": model.name, "system_prompt": model.system_prompt, "max_new_tokens": max_new}
    for side, path, n in (("harmful", args.harmful, args.n_harmful), ("harmless", args.harmless, args.n_harmless)):
        items = load_instructions(side, path=path, n=n) if path else load_instructions(side, split="val", n=n)
        start = time.perf_counter()
        completions = generate(model, instructions_only(items), max_new_tokens=max_new,
                               batch_size=cfg.generation_batch_size)
        rate = refusal_rate(completions)
        report[side] = {"source": path or f"own {side} val split", **rate.to_dict(),
                        "seconds": time.perf_counter() - start}
        print(f"{side:9s} {rate}  ({report[side]['source']})", flush=True)
    out = cfg.run_dir / f"baseline_refusal_system_{args.system_prompt}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
