"""Benchmark of the project's model design, TransformerLens' `TransformerBridge` (one HF model wrapped with
TransformerLens hook names, `helpers.models.load_model`), on the offline model.

The project moved to the bridge from twin models (a `HookedTransformer` plus a Hugging Face twin of the same
weights) after this benchmark compared the two; the twin design is gone from the code, and its column is kept
in the README's design note. Run: `python scripts/bench_bridge.py` (about 5 minutes on a 2-core CPU); prints
a JSON report. Every generation condition produces exactly `--new-tokens` tokens per prompt (equal work).

Measured against Hugging Face on the same weights:
- log-prob parity on chat prompts (max |Δ log p| and the relative bound), `blocks.L.hook_resid_pre` against
  HF `hidden_states[L]`;
- greedy generation tokens/s: plain HF `generate`, ablation at every layer, addition at one layer;
- caching `blocks.13.hook_resid_pre` (run_with_cache, stop_at_layer) against a plain HF forward to layer 13;
- peak resident memory after loading and at the end;
- sae_lens splicing with the error term (logits unchanged);
- the same `helpers.hooks.tl_hooks` drive both the bridge's forward passes and HF's own `generate`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.generation import layers_from  # noqa: E402
from helpers.hooks import NO_INTERVENTION, Intervention, tl_hooks  # noqa: E402
from helpers.models import OFFLINE_MODEL, LoadedModel, load_tokenizer, position_ids, resolve_model_source  # noqa: E402

from bench_generation import PROMPTS  # noqa: E402  (scripts/ is on sys.path when run as a script)

HOOK_LAYER = 13


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def hf_generate(hf, tokenizer, enc, new_tokens: int):
    return hf.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)


def random_sae(d_in: int, d_sae: int, hook: str):
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu"))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.05)
    sae.cfg.metadata.hook_name = hook
    return sae


@torch.no_grad()
def measure(batch_size: int, new_tokens: int, windows: int, repeats: int) -> dict:
    from transformers import AutoModelForCausalLM

    out: dict = {"design": "bridge", "threads": torch.get_num_threads()}
    start = time.perf_counter()
    from transformer_lens.model_bridge import TransformerBridge

    _, folder = resolve_model_source(OFFLINE_MODEL)
    tokenizer = load_tokenizer(str(folder))
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tl = TransformerBridge.boot_transformers(str(folder), hf_model=hf, tokenizer=tokenizer, device="cpu")
    model = LoadedModel(name="bridge", tl=tl, tokenizer=tokenizer)
    out["load_seconds"] = time.perf_counter() - start
    out["rss_after_load_gb"] = peak_rss_gb()
    n_layers = hf.config.num_hidden_layers
    hook = f"blocks.{HOOK_LAYER}.hook_resid_pre"

    # Parity with plain HF (same weights, same batch), and resid_pre against hidden_states.
    enc = model.tokenize_instructions(PROMPTS[:8])
    mask = enc["attention_mask"].bool()
    hf_out = hf(**enc, position_ids=position_ids(enc["attention_mask"]), output_hidden_states=True)
    logits, cache = tl.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"],
                                      names_filter=lambda n: n.endswith("hook_resid_pre"))
    lp_hf, lp = hf_out.logits.log_softmax(-1)[mask], logits.log_softmax(-1)[mask]
    out["logprob_max_abs_diff"] = (lp_hf - lp).abs().max().item()
    out["logprob_max_rel_diff"] = ((lp_hf - lp).abs() / lp_hf.abs().clamp(min=1e-6)).max().item()
    out["resid_pre_max_rel_diff"] = max(
        ((cache[f"blocks.{L}.hook_resid_pre"][mask] - hf_out.hidden_states[L][mask]).norm(dim=-1)
         / hf_out.hidden_states[L][mask].norm(dim=-1)).max().item() for L in range(n_layers))
    del cache, hf_out, logits

    # Steered generation against plain HF generate (same batch, same number of new tokens).
    prompts = (PROMPTS * (batch_size // len(PROMPTS) + 1))[:batch_size]
    enc = model.tokenize_instructions(prompts)
    torch.manual_seed(0)
    direction = torch.randn(hf.config.hidden_size)
    conditions = {"plain": NO_INTERVENTION, "ablation (all layers)": Intervention(ablate=direction),
                  "addition (layer 12)": Intervention(add=direction, add_layer=12)}
    hf_generate(hf, tokenizer, {k: v[:2] for k, v in enc.items()}, 4)  # warm-up
    plain = timed(lambda: hf_generate(hf, tokenizer, enc, new_tokens), repeats)
    gen = {"plain HF generate": batch_size * new_tokens / plain}
    for name, iv in conditions.items():
        def run():
            with tl.hooks(fwd_hooks=tl_hooks(iv, n_layers)):
                hf_generate(hf, tokenizer, enc, new_tokens)
        gen[name] = batch_size * new_tokens / timed(run, repeats)

    def bridge_generate():
        with tl.hooks(fwd_hooks=tl_hooks(conditions["ablation (all layers)"], n_layers)):
            tl.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=new_tokens,
                        stop_at_eos=False, do_sample=False, verbose=False)
    gen["ablation (all layers), TransformerBridge.generate"] = batch_size * new_tokens / timed(bridge_generate, 1)
    out["generation_tok_per_s"] = gen
    out["generation_relative_to_plain_hf"] = {k: v / gen["plain HF generate"] for k, v in gen.items()}

    # Caching throughput at blocks.13.hook_resid_pre against a plain HF forward to layer 13.
    from helpers.corpora import iter_texts, token_windows
    import itertools

    ctx, bw = 128, 8
    toks = torch.tensor(list(itertools.islice(token_windows(iter_texts("webtext", model.format_messages), tokenizer,
                                                              ctx), windows)))

    def plain_forward():
        with layers_from(hf, 0, HOOK_LAYER):  # plain HF through the first HOOK_LAYER layers
            for b in range(0, len(toks), bw):
                hf.model(toks[b:b + bw])

    def cache_forward():
        for b in range(0, len(toks), bw):
            _, c = tl.run_with_cache(toks[b:b + bw], names_filter=[hook], stop_at_layer=HOOK_LAYER + 1)
            c[hook].to(torch.float16)

    plain_s, cache_s = timed(plain_forward, repeats), timed(cache_forward, repeats)
    out["caching"] = {"plain_hf_tok_per_s": toks.numel() / plain_s, "cache_tok_per_s": toks.numel() / cache_s,
                      "ratio": plain_s / cache_s}

    # sae_lens splicing with the error term: logits must not change.
    sae = random_sae(hf.config.hidden_size, 4096, hook)
    enc = model.tokenize_instructions(PROMPTS[:4])
    clean = hf(**enc, position_ids=position_ids(enc["attention_mask"])).logits
    try:
        from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge

        tl.__class__ = SAETransformerBridge
        tl._acts_to_saes, tl._transcoder_output_hooks = {}, {}
        spliced = tl.run_with_saes(enc["input_ids"], saes=[sae], use_error_term=True,
                                   attention_mask=enc["attention_mask"])
        m = enc["attention_mask"].bool()
        out["sae_splice_error_term_max_rel_diff"] = ((spliced[m] - clean[m]).norm(dim=-1)
                                                     / clean[m].norm(dim=-1)).max().item()
    except Exception as e:  # reported, not hidden
        out["sae_splice_error_term_max_rel_diff"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = ap.parse_args()
    report = {"model": OFFLINE_MODEL, "batch_size": args.batch_size, "new_tokens": args.new_tokens,
              **measure(args.batch_size, args.new_tokens, args.windows, args.repeats)}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
