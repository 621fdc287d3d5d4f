"""Lee et al.'s prompt specificity on a preset's SAE pair without notebook 03's outputs (opt-in; a few minutes).

Notebook 06's section 3b (`gradients.specificity_grid`) with the target direction computed here: the difference of
means at `--layer` / `--position` of our harmful and harmless training prompts (notebook 03 selects layer 15,
position −1 offline, from filtered prompts; this uses every training prompt, so its r is close to, not the same as,
notebook 03's). Needs notebooks 01-02 of the preset (the SAEs). Writes `runs/<preset>/prompt_specificity.json`.

Run: `python scripts/prompt_specificity.py [--preset offline] [--layer 15] [--position -1] [--k 10]`
"""

from __future__ import annotations

import argparse
import time

from helpers import decomposition as dec
from helpers import gradients as grads
from helpers.config import get_config
from helpers.directions import candidate_directions, post_instruction_positions
from helpers.files import atomic_write_json
from helpers.instructions import instructions_only, load_instructions, paraphrases
from helpers.models import load_from_config
from helpers.saes import load_sae


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline")
    ap.add_argument("--layer", type=int, default=15, help="the target layer (notebook 03's selected layer offline)")
    ap.add_argument("--position", type=int, default=-1, help="post-instruction position of r (offline: -1)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args(argv)
    try:
        cfg = get_config(args.preset)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    folders = dec.sae_folders(cfg.run_dir, list(cfg.sae_pair))  # a clear error when notebook 02 has not run
    started = time.time()
    model = load_from_config(cfg)
    model.check_layer(args.layer)
    positions = post_instruction_positions(model)
    if not -len(positions) <= args.position < 0:
        raise SystemExit(f"--position must be in [-{len(positions)}, -1] (the post-instruction tokens), got {args.position}.")
    saes = {n: load_sae(p, model, cfg.sae_hook) for n, p in folders.items()}
    source = int(cfg.sae_hook.split(".")[1])
    train = {s: instructions_only(load_instructions(s, split="train")) for s in ("harmful", "harmless")}
    r = candidate_directions(model, train["harmful"], train["harmless"], cfg.forward_batch_size)
    r_target = r[args.position, args.layer].float()
    templates = {"no system turn": None}
    if cfg.system_prompt is not None:
        templates[f"preset (system_prompt={cfg.system_prompt!r})"] = cfg.system_prompt
    requests = paraphrases()
    spec, metric = grads.specificity_grid(model, saes, requests, source, args.layer, r_target, templates, "mean",
                                          None, args.k, args.resamples, cfg.seed, cfg.forward_batch_size)
    rows = {}
    for key, v in spec.items():
        rows[" · ".join(key)] = v
        def ci(x: dict) -> str:
            return f"{x['estimate']:+.2f} [{x['ci95'][0]:+.2f}, {x['ci95'][1]:+.2f}]"

        print(f"{' · '.join(key)}: within {ci(v['within'])}, between {ci(v['between'])}, difference "
              f"{ci(v['difference'])} -> prompt-specific: {grads.specificity_verdict(v)}")
    refused = {t: {kind: v["positive_share"] for kind, v in grads.metric_by_kind(requests, m).items()}
               for t, m in metric.items()}
    print("share with refusal metric > 0, by kind:", refused)
    out = atomic_write_json(cfg.run_dir / "prompt_specificity.json", {
        "preset": cfg.preset, "source_layer": source, "target_layer": args.layer, "position": args.position,
        "direction": "difference of means of every training prompt (not notebook 03's filtered set)", "k": args.k,
        "rule": "mean", "specificity": rows, "refusal_metric_positive_share": refused,
        "seconds": round(time.time() - started, 1)})
    print(f"written to {out} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
