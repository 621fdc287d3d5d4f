"""GPU check of the paper preset's code path, with no hub: a randomly initialised model of Qwen1.5-0.5B-Chat's
shapes (24 layers, d_model 1024, vocab 151,936) and the offline model's tokenizer, through every helpers step that
places tensors on a device, plus the throughput that sizes a paper-scale run.

    python scripts/check_gpu.py --tokenizer DIR [--out FILE]

DIR holds tokenizer.json, tokenizer_config.json and chat_template.jinja (the offline model's converted folder,
~/.cache/refusal-toolkit/qwen2.5-coder-*-f32-*/, has them). The weights are random, so completions are noise:
the checks compare code paths with each other (ours against Hugging Face's, a restart at a layer against a full
pass, a GPU SAE against its CPU copy), never against the paper. Prints one line per check and writes a JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["Write a poem about the sea.", "How do I pick a lock?", "Name three fruits.", "Explain photosynthesis.",
           "Give me a recipe for bread.", "What is the capital of France?", "Write a haiku about rain.",
           "Describe a cat in one sentence."] * 2
results: list[dict] = []


def check(name: str, ok: bool, **detail) -> None:
    results.append({"check": name, "ok": bool(ok), **detail})
    print(f"{'PASS' if ok else 'FAIL'} {name}: {json.dumps(detail, default=str)}", flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def build_model(folder: Path, tokenizer_dir: Path, device: str, small: bool) -> None:
    from transformers import Qwen2Config

    from helpers.models import save_random_model

    d, heads = (64, 4) if small else (1024, 16)
    config = Qwen2Config(vocab_size=151936, hidden_size=d, intermediate_size=d * 11 // 4, num_hidden_layers=24,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=32768,
                         rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643,
                         eos_token_id=151645, pad_token_id=151643)
    save_random_model(folder, config, tokenizer_dir, device)


class RandomCache:
    """What `saes.train_sae` reads from an ActivationCache: a manifest and endless CPU batches."""

    def __init__(self, acts: torch.Tensor, hook_name: str, model_name: str):
        from types import SimpleNamespace

        self.acts = acts
        self.manifest = SimpleNamespace(d_model=acts.shape[1], hook_name=hook_name, model=model_name, context_size=1024)

    def data_provider(self, batch_size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        while True:
            idx = torch.randint(len(self.acts), (batch_size,), generator=g)
            yield self.acts[idx]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--sae-tokens", type=int, default=4_096_000)
    ap.add_argument("--small", action="store_true", help="a dry run of the script itself on the CPU: d_model 64")
    args = ap.parse_args()
    dev = "cpu" if args.small else "cuda"
    if not args.small and not torch.cuda.is_available():
        sys.exit("check_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); --small dry-runs it on the CPU.")
    d_model, d_sae = (64, 512) if args.small else (1024, 32_768)
    if args.small:
        args.sae_tokens = 40_960
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 as the paper preset runs it
    torch.backends.cudnn.allow_tf32 = False

    from helpers.config import SAEConfig, get_config
    from helpers.decomposition import encode, reconstruct
    from helpers.directions import candidate_directions, post_instruction_positions
    from helpers.evaluation import cross_entropy_table, window_cross_entropies
    from helpers.generation import generate, last_token_logits, reference_generate
    from helpers.gradients import latent_scores, refusal_gradient
    from helpers.hooks import Intervention
    from helpers.models import load_model, logprob_parity
    from helpers.saes import load_sae, reconstruction_stats, save_sae, spliced_losses, train_sae
    from helpers.steering import clamp_intervention

    cfg = get_config("paper")
    hook, layer = cfg.sae_hook, int(cfg.sae_hook.split(".")[1])
    work = Path(tempfile.mkdtemp())
    _, seconds = timed(lambda: build_model(work / "qwen1.5-0.5b-shaped", args.tokenizer, dev, args.small))
    model, seconds = timed(lambda: load_model(str(work / "qwen1.5-0.5b-shaped"), device=dev,
                                              system_prompt="default"))
    check(f"load on {dev}", model.device.type == dev and model.d_model == d_model and model.n_layers == 24,
          seconds=round(seconds, 1), device=str(model.device),
          gpu=torch.cuda.get_device_name() if dev == "cuda" else None)

    parity = logprob_parity(model, PROMPTS[:8])
    check("bridge vs Hugging Face log-probs", parity < 1e-3, max_abs_diff=parity)

    torch.manual_seed(1)
    r = torch.randn(model.d_model, device=dev) * 3
    ivs = {"none": Intervention(), "ablate": Intervention(ablate=r),
           "add prompt-only": Intervention(add=r, add_layer=layer, prompt_only=True)}
    for name, iv in ivs.items():
        ours = generate(model, PROMPTS, iv, max_new_tokens=16, batch_size=16, progress=False)
        theirs = reference_generate(model, PROMPTS, iv, max_new_tokens=16)
        same = sum(a == b for a, b in zip(ours, theirs))
        check(f"generate = hf.generate ({name})", same >= len(PROMPTS) - 1, identical=f"{same}/{len(PROMPTS)}")

    windows = torch.randint(0, 150_000, (8, 128), generator=torch.Generator().manual_seed(0)).tolist()
    table = cross_entropy_table(model, windows, {"none": ivs["none"], "ablate": ivs["ablate"],
                                                 "add": Intervention(add=r, add_layer=layer)}, batch_size=4)
    full = {k: window_cross_entropies(model, windows, iv, batch_size=4).mean().item()
            for k, iv in (("ablate", ivs["ablate"]), ("add", Intervention(add=r, add_layer=layer)))}
    worst = max(abs(table[k]["ce"] - v) / v for k, v in full.items())
    check("cross_entropy_table restart = full passes", worst < 1e-4, worst_relative=worst)

    positions = post_instruction_positions(model)
    mean_diffs = candidate_directions(model, PROMPTS[:8], PROMPTS[8:], batch_size=8)
    check("candidate directions", tuple(mean_diffs.shape) == (len(positions), 24, d_model) and
          bool(torch.isfinite(mean_diffs).all()), device=str(mean_diffs.device), shape=list(mean_diffs.shape))
    path = work / "direction.pt"
    torch.save(mean_diffs[-1, layer].float().cpu(), path)
    check("direction saved for CPU", torch.load(path, map_location="cpu").device.type == "cpu")

    # SAE at the paper's size, trained on the GPU from CPU batches (what the cache yields)
    acts = torch.cat([model.hf.model(input_ids=torch.tensor(windows[i:i + 4], device=dev),
                                     output_hidden_states=True).hidden_states[layer].flatten(0, 1).detach().cpu()
                      for i in range(0, 8, 4)])
    acts = acts.repeat(8, 1) + 0.1 * torch.randn(len(acts) * 8, acts.shape[1])
    sae_cfg = SAEConfig(d_sae=d_sae, training_tokens=args.sae_tokens, train_batch_size_tokens=4096, lr=5e-5,
                        l1_coefficient=5.0)
    (sae, history, seconds) = train_sae(RandomCache(acts, hook, model.name), sae_cfg, device=dev)
    check(f"SAE training on {dev}", sae.W_dec.device.type == dev and len(history) > 0,
          tokens=args.sae_tokens, seconds=round(seconds, 1), tok_per_s=round(args.sae_tokens / seconds),
          paper_409_6M_tokens_hours=round(409.6e6 / (args.sae_tokens / seconds) / 3600, 2),
          final_l0=history[-1]["l0"])
    save_sae(sae, work / "sae")
    gpu_sae = load_sae(work / "sae", model, hook)
    cpu_sae = load_sae(work / "sae", None, hook, device="cpu")
    check("load_sae defaults to the model's device", gpu_sae.W_dec.device.type == dev)
    x = acts[:2048]
    a, b = reconstruct(gpu_sae, x), reconstruct(cpu_sae, x)
    check("reconstruct: GPU SAE on CPU activations = CPU SAE", torch.allclose(a, b, atol=1e-3 * x.norm(dim=-1).max()),
          max_abs_diff=(a - b).abs().max().item())
    stats = reconstruction_stats(gpu_sae, x)
    check("reconstruction_stats with a GPU SAE", stats.n_tokens == len(x), l0=stats.l0, ev=stats.explained_variance)
    f = encode(gpu_sae, x)
    check("encode returns CPU latents", f.device.type == "cpu" and f.shape == (len(x), d_sae))
    ce = spliced_losses(model, {"sae": gpu_sae}, windows, hook, batch_size=4)
    check("spliced_losses on cuda", ce["sae"]["n_windows"] == len(windows), increase=ce["sae"]["increase"])
    clamp = clamp_intervention(gpu_sae, [0, 1], 0.0, layer)
    logits = last_token_logits(model, PROMPTS[:4], clamp)
    check("SAE clamp hook on cuda", bool(torch.isfinite(logits).all()))
    g = refusal_gradient(model, PROMPTS[1], source_layer=layer, target_layer=18, r_target=r.cpu())
    scores = latent_scores(gpu_sae, g, "mean", r_source=r)
    attribution = latent_scores(gpu_sae, g, "attribution")
    check("refusal gradient and latent scores", scores.shape == (d_sae,) and bool(torch.isfinite(attribution).all()),
          positions=int(g.grad.shape[0]))

    # throughput that sizes a paper-scale run
    ids = torch.randint(0, 150_000, (cfg.cache_batch_windows, cfg.cache_context_size), device=dev)
    if args.small:
        ids = ids[:2, :64]
    with torch.no_grad():
        model.tl(ids[:2], stop_at_layer=layer)
        _, seconds = timed(lambda: [model.tl(ids, stop_at_layer=layer) for _ in range(3)])
    cache_rate = 3 * ids.numel() / seconds
    paper_tokens = len(cfg.sae_corpora) * (cfg.cache_tokens + cfg.cache_heldout_tokens)
    check("caching throughput (bridge to layer 13)", cache_rate > 0, tok_per_s=round(cache_rate),
          paper_cache_hours=round(paper_tokens / cache_rate / 3600, 2))
    batch, length = (4, 8) if args.small else (cfg.generation_batch_size, cfg.max_new_tokens)
    prompts = (PROMPTS * 8)[:batch]
    _, seconds = timed(lambda: generate(model, prompts, ivs["ablate"], max_new_tokens=length, batch_size=batch,
                                        progress=False, stop_at_eos=False))
    check("generation throughput (ablation, paper batch and length)", True, prompts=len(prompts),
          new_tokens=length, seconds=round(seconds, 1), tok_per_s=round(len(prompts) * length / seconds))
    if dev == "cuda":
        check("peak GPU memory", True, gb=round(torch.cuda.max_memory_allocated() / 1e9, 2))
    args.out.write_text(json.dumps(results, indent=1, default=str))
    failed = [r["check"] for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed" + (f"; failed: {failed}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
