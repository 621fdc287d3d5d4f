"""Seed variance of Kissane et al.'s headline numbers (opt-in; not part of the main job's two hours).

Trains the preset's SAE pair again from the same caches with other seeds (one round each, at the L1 coefficient the
main job's seed-0 SAE ended at, so the L0 stays matched), then decomposes r with every seed's SAEs: the cosine of the
reconstructed difference of means and the max decoder cosine, on our matched sets (the preset's template) and, when
Kissane et al.'s prompt lists are present, their protocol (AdvBench vs Alpaca as their code splits them, no system
turn; their split of Arditi et al.'s mixed public splits beside it), with their sparsity procedure and a style
control. Prints mean ± sd over seeds and writes `runs/<preset>/seed_variance.json`, which the report reads. Needs
notebooks 01 and 02 of the preset to have run.

Run: `python scripts/seed_variance.py [--preset offline] [--seeds 1 2] [--public FOLDER]`
(offline: ~4 min of training per SAE and seed on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

from helpers import decomposition as dec
from helpers.activations import open_cache, split_heldout
from helpers.config import SAEConfig, get_config
from helpers.files import atomic_write_json
from helpers.instructions import instructions_only, load_instructions
from helpers.models import load_from_config
from helpers.public_splits import KISSANE_SET, kissane_prompt_sets
from helpers.saes import load_sae, train_or_reuse


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline")
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2],
                    help="seeds besides the main job's (seed 0); none: only seed 0's decomposition, no training")
    ap.add_argument("--public", type=Path, default=None, help="the public splits (default: beside the clone)")
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args(argv)
    cfg = get_config(args.preset)
    pair = cfg.sae_pair
    folders = dec.sae_folders(cfg.run_dir, list(pair))  # notebook 02's seed-0 SAEs (a clear error if missing)
    model = load_from_config(cfg)
    saes_by_seed = {0: {n: load_sae(p, model, cfg.sae_hook) for n, p in folders.items()}}
    for seed in args.seeds:
        saes_by_seed[seed] = {}
        for name in pair:
            record = json.loads((folders[name] / "training.json").read_text())
            sae_cfg = SAEConfig(**record["sae_config"])  # ends at the coefficient seed 0 matched L0 with
            cache = open_cache(cfg, model.name, name, "train")
            tune, _ = split_heldout(open_cache(cfg, model.name, name, "heldout").load_all())
            folder = cfg.run_dir / "saes_seeds" / f"{name}_seed{seed}"
            train_or_reuse(name, cache, tune["activations"], sae_cfg, folder, cfg.target_l0, tolerance=cfg.l0_tolerance,
                           max_rounds=1, seed=seed, device=cfg.device)
            saes_by_seed[seed][name] = load_sae(folder, model, cfg.sae_hook)
    n = args.n_prompts
    prompt_sets = {"ours (matched sets)": {s: instructions_only(load_instructions(s, split="train", n=n))
                                           for s in ("harmful", "harmless")}}
    public = kissane_prompt_sets(args.public, n)
    templates = {f"preset (system_prompt={cfg.system_prompt!r})": cfg.system_prompt}
    if public:
        prompt_sets.update(public)
        templates["no system turn (paper)"] = None
    # Kissane et al.'s own prompts also get their sparsity procedure and the style control, at every seed
    ks = [k for k in (2 ** i for i in range(10)) if k <= min(s.cfg.d_sae for s in saes_by_seed[0].values())]
    per_seed = {seed: dec.protocol_grid(model, saes, prompt_sets, templates, cfg.sae_hook, -1, args.resamples, cfg.seed,
                                        full_sets=(KISSANE_SET,), ks=ks, pair=tuple(pair))
                for seed, saes in saes_by_seed.items()}
    summary = {}
    for key in per_seed[0]:
        for name in pair:
            cos = [per_seed[s][key]["faithfulness"]["saes"][name]["cosine"]["estimate"] for s in per_seed]
            mdc = [per_seed[s][key]["max_decoder_cosine"][name]["cosine"] for s in per_seed]
            summary[f"{key} · {name}"] = {"cosine": cos, "max_decoder_cosine": mdc, "seeds": list(per_seed)}
            sd = (lambda v: statistics.stdev(v) if len(v) > 1 else float("nan"))
            ci = per_seed[0][key]["faithfulness"]["saes"][name]["cosine"]["ci95"]
            print(f"{key} · {name}: cosine {statistics.mean(cos):.3f} ± {sd(cos):.3f} [{min(cos):.3f}, {max(cos):.3f}] "
                  f"(seed 0: 95% CI over prompts [{ci[0]:.3f}, {ci[1]:.3f}]); max decoder cosine "
                  f"{statistics.mean(mdc):.3f} ± {sd(mdc):.3f} (n = {len(cos)} seeds)")
        diff = per_seed[0][key]["faithfulness"]["differences"].get(f"chat - {pair[0]}", {}).get("cosine")
        if diff:
            print(f"{key}: chat − {pair[0]} (seed 0) {diff['estimate']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]")
        for extra in ("smallest_k", "style_control"):
            if per_seed[0][key].get(extra):
                print(f"{key}: {extra} (seed 0)",
                      per_seed[0][key][extra] if extra == "smallest_k" else dec.control_verdict(per_seed[0][key][extra]))
    # several seeds: the seed spread the report reads; seed 0 alone: its decomposition only
    name = "seed_variance.json" if len(per_seed) > 1 else "kissane_protocol.json"
    out = atomic_write_json(cfg.run_dir / name, {"pair": list(pair), "summary": summary,
                                                 "per_seed": {str(k): v for k, v in per_seed.items()}})
    print(f"written to {out}")


if __name__ == "__main__":
    main()
