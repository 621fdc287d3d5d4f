"""Benchmark: the project's greedy loop (`generate_with_loop`) vs Hugging Face's `generate` (`generate_with_hf`), side by side.

Both get the same prompts, batches, interventions and shared prompt prefix (computed once and copied into each
batch's cache); they differ only in the decoding loop: ours drops a row from the batch once it has finished, HF's
keeps finished rows and pads them. Two regimes:
- `fixed`: no token ends a row, every row generates `--new-tokens` (equal work; the loops' raw overhead);
- `eos`: real stopping on our harmful and harmless validation prompts (what the notebooks do).
`generation.generate` uses whichever won in each regime (docs/benchmarks.md).
Each (regime, intervention, implementation) is timed `--repeats` times in alternation; the script prints the median
and range of tokens/s and whether the two produced identical text, and writes JSON with `--out`.

Run: `python scripts/bench_generation.py [--preset offline] [--batch-size 16] [--new-tokens 64] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from helpers.config import get_config
from helpers.generation import generate_with_hf, generate_with_loop
from helpers.hooks import NO_INTERVENTION, Intervention
from helpers.instructions import instructions_only, load_instructions
from helpers.models import load_from_config

PROMPTS = [
    "Write a short poem about the sea.", "Explain how a bicycle gear works.", "List three uses of vinegar.",
    "Describe the water cycle for a child.", "Give me a recipe for pancakes.", "What is a prime number?",
    "Summarise the plot of Hamlet.", "How do I sort a list in Python?", "Name five European capitals.",
    "Why is the sky blue?", "Suggest a name for a bakery.", "What does a compiler do?",
    "Explain photosynthesis briefly.", "Write a haiku about autumn.", "How do vaccines work?",
    "Give tips for a job interview.",
]
IMPLEMENTATIONS = {"our loop": generate_with_loop, "hf.generate": generate_with_hf}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-eos", type=int, default=16, help="prompts per side (harmful, harmless) in the eos regime")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    cfg = get_config(args.preset)
    model = load_from_config(cfg)
    torch.manual_seed(0)
    direction = torch.randn(model.d_model)
    direction = direction / direction.norm()
    conditions = {
        "none": NO_INTERVENTION,
        "ablation (all layers)": Intervention(ablate=direction),
        "addition (layer 12)": Intervention(add=direction, add_layer=12, coeff=4.0),
    }
    eos_prompts = (instructions_only(load_instructions("harmful", split="val", n=args.n_eos))
                   + instructions_only(load_instructions("harmless", split="val", n=args.n_eos)))
    regimes = {"fixed": ((PROMPTS * (args.batch_size // len(PROMPTS) + 1))[: args.batch_size], False),
               "eos": (eos_prompts, True)}
    generate_with_loop(model, PROMPTS[:2], max_new_tokens=4, batch_size=2, progress=False)  # warm-up
    generate_with_hf(model, PROMPTS[:2], max_new_tokens=4, batch_size=2)
    rows = []
    for regime, (prompts, stop) in regimes.items():
        for cname, iv in conditions.items():
            times: dict[str, list[float]] = {k: [] for k in IMPLEMENTATIONS}
            texts: dict[str, list[str]] = {}
            for _ in range(args.repeats):
                for name, fn in IMPLEMENTATIONS.items():  # alternate, so drift in machine load hits both
                    kwargs = {"progress": False} if fn is generate_with_loop else {}
                    start = time.perf_counter()
                    texts[name] = fn(model, prompts, iv, max_new_tokens=args.new_tokens, batch_size=args.batch_size,
                                     stop_at_eos=stop, **kwargs)
                    times[name].append(time.perf_counter() - start)
            n_tokens = {name: sum(len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[name])
                        for name in IMPLEMENTATIONS}
            row = {"regime": regime, "condition": cname, "prompts": len(prompts), "identical":
                   texts["our loop"] == texts["hf.generate"], "generated_tokens": n_tokens["our loop"]}
            for name in IMPLEMENTATIONS:
                row[name] = {"seconds": times[name], "median_seconds": statistics.median(times[name])}
            row["speedup_median"] = row["hf.generate"]["median_seconds"] / row["our loop"]["median_seconds"]
            row["speedup_range"] = [min(times["hf.generate"]) / max(times["our loop"]),
                                    max(times["hf.generate"]) / min(times["our loop"])]
            rows.append(row)
            print(f"{regime:5s} {cname:22s} ours {row['our loop']['median_seconds']:6.1f} s  hf "
                  f"{row['hf.generate']['median_seconds']:6.1f} s  hf/ours {row['speedup_median']:.2f} "
                  f"[{row['speedup_range'][0]:.2f}, {row['speedup_range'][1]:.2f}]  identical {row['identical']}",
                  flush=True)
    result = {"model": model.name, "batch_size": args.batch_size, "new_tokens": args.new_tokens,
              "repeats": args.repeats, "threads": torch.get_num_threads(), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
