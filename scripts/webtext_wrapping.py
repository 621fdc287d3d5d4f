"""How Kissane et al.'s Pile was wrapped, and whether it matters (opt-in; not part of the main job's two hours).

Their Pile SAE's data is named "pile-chat-format-with-assistant" / "inst-format-with-assistant"; the exact wrapping is
not published. The preset's `webtext_chat` puts each document in the assistant turn after an empty user turn; the
other reading, `webtext_user`, puts it in the user turn followed by the assistant header. This caches `webtext_user`
like notebook 01 (resumable), trains its SAE like notebook 02 (the L0 search starting from webtext_chat's
coefficient) and decomposes r with both, beside the chat SAE: the cosine of the reconstructed difference of means
with paired bootstrap intervals, on our matched sets and, when the public splits are present, on Kissane et al.'s
protocol. Writes `runs/<preset>/webtext_wrapping.json`. Needs notebooks 01 and 02 of the preset to have run.

Run: `python scripts/webtext_wrapping.py [--preset offline] [--public FOLDER]` (offline: ~25 min of caching and
~4-8 min of training on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from helpers import decomposition as dec
from helpers.activations import cache_from_config, open_cache, split_heldout
from helpers.config import SAEConfig, get_config
from helpers.files import atomic_write_json
from helpers.instructions import instructions_only, load_instructions
from helpers.models import load_from_config
from helpers.public_splits import kissane_prompt_sets
from helpers.saes import load_sae, train_or_reuse

NEW = "webtext_user"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline")
    ap.add_argument("--public", type=Path, default=None, help="the public splits (default: beside the clone)")
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args(argv)
    cfg = get_config(args.preset)
    folders = dec.sae_folders(cfg.run_dir, ["webtext_chat", "chat"])  # a clear error when the preset has no webtext_chat
    model = load_from_config(cfg)
    for split in ("train", "heldout"):
        cache_from_config(model, cfg, NEW, split)  # resumes where a killed run stopped
    record = json.loads((folders["webtext_chat"] / "training.json").read_text())
    sae_cfg = SAEConfig(**record["sae_config"])
    tune, _ = split_heldout(open_cache(cfg, model.name, NEW, "heldout").load_all())
    folder = cfg.run_dir / "saes" / NEW
    train_or_reuse(NEW, open_cache(cfg, model.name, NEW, "train"), tune["activations"], sae_cfg, folder, cfg.target_l0,
                   tolerance=cfg.l0_tolerance, max_rounds=cfg.l0_max_rounds, seed=cfg.seed, device=cfg.device)
    saes = {name: load_sae(path, model, cfg.sae_hook) for name, path in {**folders, NEW: folder}.items()}
    n = args.n_prompts
    prompt_sets = {"ours (matched sets)": {s: instructions_only(load_instructions(s, split="train", n=n))
                                           for s in ("harmful", "harmless")}}
    templates = {f"preset (system_prompt={cfg.system_prompt!r})": cfg.system_prompt, "no system turn (paper)": None}
    prompt_sets.update(kissane_prompt_sets(args.public, n))
    grid = dec.protocol_grid(model, saes, prompt_sets, templates, cfg.sae_hook, -1, args.resamples, cfg.seed)
    for key, prot in grid.items():
        f = prot["faithfulness"]

        def ci(d):
            return f"{d['estimate']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"

        print(f"{key}: " + "; ".join(f"{n} {ci(f['saes'][n]['cosine'])}" for n in saes)
              + f"; webtext_chat - webtext_user {ci(f['differences']['webtext_chat - webtext_user']['cosine'])}")
    out = atomic_write_json(cfg.run_dir / "webtext_wrapping.json", {"saes": list(saes), "protocols": grid})
    print(f"written to {out}")


if __name__ == "__main__":
    main()
