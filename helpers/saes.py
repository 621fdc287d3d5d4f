"""Train, save, load and evaluate SAEs with sae_lens, from an activation cache.

Training uses sae_lens' own `SAETrainer` fed by `ActivationCache.data_provider` (no model in the
loop). The default architecture is Kissane et al.'s standard ReLU SAE with an L1 penalty scaled
by decoder norms (sae_lens' "standard" SAE), `apply_b_dec_to_input=False` and
`normalize_activations="expected_average_only_in"`.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from helpers.activations import ActivationCache, hook_layer, training_token_mask
from helpers.config import SAEConfig
from helpers.models import LoadedModel


class SAEMismatchError(ValueError):
    """An SAE does not fit the model or hook it is used with."""


def on_sae(sae, x: Tensor) -> Tensor:
    """`x` as float32 on the SAE's device (cached activations live on the CPU in float16; the SAE may be on a GPU)."""
    return x.to(device=sae.W_dec.device, dtype=torch.float32)


@torch.no_grad()
def encode_batches(sae, x: Tensor, batch_size: int = 4096) -> Iterator[Tensor]:
    """Latent activations of raw activations `x` `[n, d_model]`, one float32 CPU batch `[b, d_sae]` at a time
    (a held-out cache's whole latent matrix need not fit in memory)."""
    for b in range(0, len(x), batch_size):
        yield sae.encode(on_sae(sae, x[b:b + batch_size])).float().cpu()


def training_sae(sae_cfg: SAEConfig, d_in: int, hook_name: str, model_name: str, context_size: int,
                 device: str = "cpu"):
    """A fresh sae_lens TrainingSAE of the configured architecture."""
    from sae_lens import (BatchTopKTrainingSAEConfig, JumpReLUTrainingSAEConfig, StandardTrainingSAEConfig,
                          TopKTrainingSAEConfig, TrainingSAE)
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(model_name=model_name, hook_name=hook_name, context_size=context_size, prepend_bos=False)
    common = dict(d_in=d_in, d_sae=sae_cfg.d_sae, apply_b_dec_to_input=False,
                  normalize_activations="expected_average_only_in", device=device, metadata=meta)
    if sae_cfg.architecture == "standard":
        warm_up = int(sae_cfg.l1_warm_up_fraction * sae_cfg.training_tokens / sae_cfg.train_batch_size_tokens)
        cfg = StandardTrainingSAEConfig(l1_coefficient=sae_cfg.l1_coefficient, l1_warm_up_steps=warm_up, **common)
    elif sae_cfg.architecture == "topk":
        cfg = TopKTrainingSAEConfig(k=sae_cfg.k, **common)
    elif sae_cfg.architecture == "batchtopk":
        cfg = BatchTopKTrainingSAEConfig(k=sae_cfg.k, **common)
    elif sae_cfg.architecture == "jumprelu":
        cfg = JumpReLUTrainingSAEConfig(l0_coefficient=sae_cfg.l1_coefficient, **common)
    else:
        raise ValueError(f"Unknown SAE architecture {sae_cfg.architecture!r}; valid: standard, topk, batchtopk, jumprelu")
    return TrainingSAE.from_dict(cfg.to_dict())


def _trainer_class():
    from sae_lens.training.sae_trainer import SAETrainer

    class RecordingTrainer(SAETrainer):
        """sae_lens' trainer, recording the losses and L0 of every step for training curves, and saving a checkpoint
        every `checkpoint_every_s` seconds when given one (`train_sae`)."""

        history: list[dict]
        checkpoint: Checkpoint | None = None

        def _update_pbar(self, step_output, pbar, update_interval: int = 1):  # called after every step
            pbar.update(self.cfg.train_batch_size_samples)
            self._record(step_output, pbar)
            if self.checkpoint is not None:
                self.checkpoint.maybe_save(self)

        def _record(self, step_output, pbar) -> None:
            every = max(1, self.cfg.total_training_steps // 200)
            if (self.n_training_steps - 1) % every and self.n_training_steps != self.cfg.total_training_steps:
                return
            if not hasattr(self, "history"):
                self.history = []
            row = {"step": self.n_training_steps, "tokens": self.n_training_samples,
                   "l0": (step_output.feature_acts > 0).float().sum(-1).mean().item()}
            row.update({k: float(v.item()) for k, v in step_output.losses.items()})
            self.history.append(row)
            pbar.set_description(f"step {self.n_training_steps} | mse {row.get('mse_loss', math.nan):.4f} | "
                                 f"L0 {row['l0']:.1f}")

    return RecordingTrainer


class _Counted:
    """An iterator that counts what it hands out (the batches a training run has read, for its checkpoint)."""

    def __init__(self, it: Iterator[Tensor]):
        self.it, self.n = it, 0

    def __iter__(self):
        return self

    def __next__(self) -> Tensor:
        batch = next(self.it)
        self.n += 1
        return batch


class Checkpoint:
    """A training run's latest state, the folder `<folder>/step-<n>/`, written whole (`atomic_write_dir`; the one
    before it is removed after): sae_lens' own checkpoint files (the SAE's weights by `save_model`; optimizer,
    schedulers, firing statistics, counters and activation scale by `SAETrainer.save_trainer_state`) and
    `progress.pt` (the run's key, history, seconds spent, batches read and random state). A run resumed from it
    reads the data from where the saved run stopped, so it ends with the weights of a run never stopped."""

    def __init__(self, folder: Path, key: dict, every_s: float, provider: _Counted):
        self.folder, self.every_s, self.provider = Path(folder), every_s, provider
        self.key = json.loads(json.dumps(key, default=float))  # as the file holds it (tuples become lists)
        self.started = self.last = time.perf_counter()
        self.seconds_before = 0.0

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def saved(self) -> list[Path]:
        """The checkpoint folders here, newest first (two only when a run was killed between writing one and
        removing the one before)."""
        return sorted((p for p in self.folder.glob("step-*") if re.fullmatch(r"step-\d+", p.name)),
                      key=lambda p: int(p.name[5:]), reverse=True)

    def restore(self, trainer) -> Path | None:
        """Load the newest checkpoint saved with this run's key into `trainer`, skip the batches its run had read,
        and return its folder (None: there is none, and the run trains from the start). One that cannot be read is
        reported in one line and passed over."""
        from safetensors.torch import load_file
        from sae_lens.constants import ACTIVATION_SCALER_CFG_FILENAME, SAE_WEIGHTS_FILENAME, TRAINER_STATE_FILENAME

        for path in self.saved():
            try:  # read every file before changing the trainer, so a damaged one leaves it untouched
                progress = torch.load(path / "progress.pt", map_location="cpu", weights_only=False)
                if progress.get("key") != self.key:
                    continue
                load_file(path / SAE_WEIGHTS_FILENAME)
                torch.load(path / TRAINER_STATE_FILENAME, map_location="cpu")
                json.loads((path / ACTIVATION_SCALER_CFG_FILENAME).read_text())
            except Exception as e:  # written whole, so only a damaged disk or a hand edit gets here
                tqdm.write(f"checkpoint {path} unreadable ({type(e).__name__}): passed over")
                continue
            trainer.sae.load_weights_from_checkpoint(path)
            trainer.load_trainer_state(path)
            trainer.history = progress["history"]
            self.seconds_before = progress["seconds"]
            torch.set_rng_state(progress["rng"])
            for _ in tqdm(range(progress["batches_read"]), desc="resuming: skipping the batches already read",
                          leave=False):
                next(self.provider)
            return path
        return None

    def maybe_save(self, trainer) -> None:
        if time.perf_counter() - self.last < self.every_s or trainer.n_training_steps >= trainer.cfg.total_training_steps:
            return
        import shutil

        from helpers.files import atomic_write_dir

        def build(tmp: Path) -> None:
            trainer.sae.save_model(tmp)
            trainer.save_trainer_state(tmp)
            torch.save({"key": self.key, "history": trainer.history, "seconds": self.seconds(),
                        "batches_read": self.provider.n, "rng": torch.get_rng_state()}, tmp / "progress.pt")

        final = self.folder / f"step-{trainer.n_training_steps}"
        shutil.rmtree(final, ignore_errors=True)  # only a stale run's (another key) can be there
        atomic_write_dir(final, build)
        for old in self.saved():
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        self.last = time.perf_counter()


def train_sae(cache: ActivationCache, sae_cfg: SAEConfig, seed: int = 0, device: str = "cpu",
              n_batches_for_norm_estimate: int = 20, checkpoint: Path | None = None, checkpoint_key: dict | None = None,
              checkpoint_every_s: float = 600.0):
    """Train an SAE on a cache with sae_lens' SAETrainer on `device` (the cache's CPU batches move there);
    returns (sae, history, seconds). With a `checkpoint` folder the run saves its state there every
    `checkpoint_every_s` seconds (`Checkpoint`) and, started again with the same `checkpoint_key` (and settings),
    resumes from it; `seconds` then counts every process's time. The caller removes the folder once it has
    saved the result."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    torch.manual_seed(seed)
    m = cache.manifest
    sae = training_sae(sae_cfg, m.d_model, m.hook_name, m.model, m.context_size, device)
    steps = sae_cfg.training_tokens // sae_cfg.train_batch_size_tokens
    trainer_cfg = SAETrainerConfig(
        total_training_samples=sae_cfg.training_tokens, train_batch_size_samples=sae_cfg.train_batch_size_tokens,
        lr=sae_cfg.lr, lr_end=sae_cfg.lr / 10, lr_warm_up_steps=max(1, steps // 20), lr_decay_steps=steps // 5,
        device=device,
        dead_feature_window=max(1, steps // 4), feature_sampling_window=max(1, steps // 4),
        n_batches_for_norm_estimate=n_batches_for_norm_estimate, logger=LoggingConfig(log_to_wandb=False))
    provider = _Counted(cache.data_provider(sae_cfg.train_batch_size_tokens, seed=seed))
    trainer = _trainer_class()(trainer_cfg, sae, provider)
    trainer.history = []
    if checkpoint is not None:
        from dataclasses import asdict

        key = {"run": checkpoint_key, "sae_config": asdict(sae_cfg), "seed": seed, "device": device,
               "n_batches_for_norm_estimate": n_batches_for_norm_estimate}
        trainer.checkpoint = saved = Checkpoint(checkpoint, key, checkpoint_every_s, provider)
        found = saved.restore(trainer)
        if found is not None:
            tqdm.write(f"resumed from {found} at step {trainer.n_training_steps:,} of {steps:,}")
    start = time.perf_counter()
    sae = trainer.fit()
    seconds = trainer.checkpoint.seconds() if trainer.checkpoint is not None else time.perf_counter() - start
    return sae, trainer.history, seconds


def save_sae(sae, folder: Path, extra: dict | None = None) -> Path:
    """Save in sae_lens' inference format (loadable with `sae_lens.SAE.load_from_disk`), plus `extra` as JSON."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # a training SAE saves its inference form (folding any training-only state); an inference SAE saves itself
    (sae.save_inference_model if hasattr(sae, "save_inference_model") else sae.save_model)(str(folder))
    if extra:
        (folder / "training.json").write_text(json.dumps(extra, indent=1, default=float))
    return folder


def load_sae(source: str | Path, model: LoadedModel | None = None, hook_name: str | None = None,
             sae_id: str | None = None, device: str | None = None, norm_scaling_factor: float | None = None):
    """Load an SAE and check it fits the model (d_in = d_model) and the hook. `source` is a saved SAE folder
    (sae_lens 6, or the older layout Kissane et al.'s SAEs were released in, converted with `norm_scaling_factor`:
    `helpers.pretrained`), `"kissane:<name>"` for one of their released SAEs (downloaded with wandb when online;
    `pretrained.KISSANE_SAES`), or a pretrained sae_lens release (`source=release, sae_id=...`).
    `device`: default the model's (else the CPU)."""
    from sae_lens import SAE

    from helpers import pretrained

    device = device or (str(model.device) if model is not None else "cpu")
    if isinstance(source, str) and source.startswith("kissane:"):
        name = source.split(":", 1)[1]
        sae = pretrained.fetch(name, Path(os.environ.get("REFUSAL_CACHE_DIR", Path.home() / ".cache" /
                                                          "refusal-toolkit")) / "kissane" / name, device=device)
        return _checked(sae, source, model, hook_name)

    path = Path(source)
    looks_like_path = isinstance(source, Path) or str(source).startswith((".", "/", "~")) or "runs/" in str(source)
    if not path.is_dir() and looks_like_path:
        raise FileNotFoundError(f"No such SAE folder: {path}. Saved SAEs live in runs/<preset>/saes/<name>/ "
                                "(notebook 02 writes them); for a pretrained release pass its name and sae_id=.")
    if path.is_dir():
        if not (path / "cfg.json").exists():
            raise FileNotFoundError(f"{path} holds no sae_lens SAE (no cfg.json). Train one with notebook 02 first.")
        if pretrained.is_legacy_folder(path):
            sae = pretrained.convert_legacy_sae(path, norm_scaling_factor, device=device)
        else:
            sae = SAE.load_from_disk(str(path), device=device)
    else:
        if sae_id is None:
            raise ValueError(f"{source!r} is not a folder; for a pretrained release also pass sae_id=...")
        sae = pretrained.registry_sae(str(source), sae_id, device=device)  # $REFUSAL_SAE_MIRROR: a local copy
    return _checked(sae, source, model, hook_name)


def residual_hook(hook_name: str, n_layers: int | None = None) -> str:
    """The `blocks.L.hook_resid_pre` whose activations an SAE's hook reads: itself, or for `blocks.L.hook_resid_post`
    (Gemma Scope's and andyrdt's residual SAEs) the same tensor, `blocks.{L+1}.hook_resid_pre`. Other hooks are an
    error: the notebooks read the residual stream."""
    import re

    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", hook_name or "")
    if m is None:
        raise SAEMismatchError(f"The SAE reads {hook_name!r}; the notebooks need a residual-stream SAE "
                               "(blocks.L.hook_resid_pre or blocks.L.hook_resid_post).")
    layer = int(m.group(1)) + (m.group(2) == "post")
    if n_layers is not None and layer >= n_layers:
        raise SAEMismatchError(f"The SAE reads {hook_name!r}, past the last layer's input (the model has {n_layers} "
                               "layers): pick an SAE of an earlier layer.")
    return f"blocks.{layer}.hook_resid_pre"


def _checked(sae, source, model: LoadedModel | None, hook_name: str | None):
    sae_hook = residual_hook(sae.cfg.metadata.hook_name, model.n_layers if model is not None else None)
    if hook_name is not None and sae_hook != hook_name:
        named = sae.cfg.metadata.hook_name
        raise SAEMismatchError(f"SAE {source} was trained on {named!r}" + (f" (= {sae_hook!r})" if named != sae_hook
                                                                             else "") + f", not {hook_name!r}.")
    if model is not None and sae.cfg.d_in != model.d_model:
        raise SAEMismatchError(f"SAE {source} has d_in={sae.cfg.d_in} but {model.name} has d_model={model.d_model}.")
    return sae


def sae_label(source) -> str:
    """The name an SAE source goes by in tables: a folder's name, "kissane:<name>"'s name, a registry id with "/"
    replaced by "_"."""
    if isinstance(source, (tuple, list)):
        return str(source[1]).replace("/", "_")
    text = str(source)
    return text.split(":", 1)[1] if text.startswith("kissane:") else Path(text).name


def open_saes(cfg, model: LoadedModel, names: list[str] | None = None, run_dir: Path | None = None) -> dict:
    """The SAEs notebooks 04-06 read, by name: the configuration's own (`cfg.saes`: folders, "kissane:<name>" or
    registry pairs, each checked against the model's width and `cfg.sae_hook`), else the ones notebook 02 saved under
    runs/<preset>/saes/ (all, or `names`; the scale study's by name too). A bad source or a mismatch fails before
    any work, in one line naming what to change."""
    from helpers.decomposition import sae_folders

    if not cfg.saes:
        return {n: load_sae(p, model, cfg.sae_hook) for n, p in sae_folders(run_dir or cfg.run_dir, names).items()}
    labels = {sae_label(s): s for s in cfg.saes}
    unknown = [n for n in names or [] if n not in labels]
    if unknown:
        raise FileNotFoundError(f"No configured SAE named {unknown}; the configuration's SAEs are {sorted(labels)}.")
    out = {}
    for name, source in labels.items():
        if names is None or name in names:
            src, sae_id = (source[0], source[1]) if isinstance(source, (tuple, list)) else (source, None)
            try:
                out[name] = load_sae(src, model, cfg.sae_hook, sae_id=sae_id)
            except SAEMismatchError as e:
                raise SAEMismatchError(f"{e} Set sae_hook in the configuration to the hook the SAE reads "
                                       "(and rerun notebook 01 for it).") from None
    return out


@dataclass
class ReconstructionStats:
    l0: float
    explained_variance: float
    mse: float
    dead_fraction: float
    n_tokens: int


@torch.no_grad()
def reconstruction_stats(sae, acts: Tensor, batch_size: int = 4096) -> ReconstructionStats:
    """L0, explained variance (1 - SSE / total variance), MSE per element, and the fraction of latents
    that never fire on `acts`."""
    sse = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for b in range(0, len(acts), batch_size):
        x = on_sae(sae, acts[b:b + batch_size])
        f = sae.encode(x)
        x_hat = sae.decode(f)
        sse += (x - x_hat).pow(2).sum().item()
        l0 += (f > 0).sum().item()
        fired |= (f > 0).any(0).cpu()
    total_var = (acts.float() - acts.float().mean(0)).pow(2).sum().item()
    n = len(acts)
    return ReconstructionStats(l0=l0 / n, explained_variance=1 - sse / total_var, mse=sse / (n * acts.shape[1]),
                               dead_fraction=1 - fired.float().mean().item(), n_tokens=n)


@torch.no_grad()
def spliced_losses(model: LoadedModel, saes: dict, windows: list[list[int]], hook_name: str, batch_size: int = 4,
                   outlier_factor: float | None = 10.0) -> dict[str, dict[str, float]]:
    """Next-token cross-entropy with each SAE's reconstruction spliced in at `hook_name`, against clean and
    zero-ablation. Per SAE: `increase` = CE_sae - CE_clean (the headline: zero-ablation's CE is catastrophic,
    ~11 nats, and dominates loss recovered) with its standard error over windows, and
    `loss_recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean)`.

    The clean pass runs once and records the hook's activations; the zero and SAE passes restart the model
    at the hook's layer. The positions training left out (the first token, norm outliers) keep their clean
    activations.
    """
    from helpers.evaluation import next_token_losses
    from helpers.generation import layers_from
    from helpers.selection import mean_and_se

    layer = hook_layer(hook_name, model.n_layers, model.name)
    per_window: dict[str, list[Tensor]] = {"clean": [], "zero": [], **{name: [] for name in saes}}
    for b in tqdm(range(0, len(windows), batch_size), desc="spliced CE", leave=False):
        ids = torch.tensor(windows[b:b + batch_size], device=model.device)
        out = model.hf(input_ids=ids, output_hidden_states=True, use_cache=False)
        clean, resid = next_token_losses(out.logits, ids), out.hidden_states[layer]  # = blocks.{layer}.hook_resid_pre
        del out
        keep, _ = training_token_mask(resid.norm(dim=-1), drop_first=True, outlier_factor=outlier_factor)
        per_window["clean"].append(clean.mean(-1).double().cpu())
        replacements = {"zero": torch.zeros_like(resid),
                        **{name: sae.decode(sae.encode(resid)).to(resid.dtype) for name, sae in saes.items()}}
        for name, new in replacements.items():
            spliced = torch.where(keep[..., None], new, resid)
            with layers_from(model.hf, layer):  # restart the model at the hook's layer
                hidden = model.hf.model(inputs_embeds=spliced, use_cache=False).last_hidden_state
            loss = next_token_losses(model.unembed(hidden), ids)
            per_window[name].append(loss.mean(-1).double().cpu())
    ce = {k: torch.cat(v) for k, v in per_window.items()}
    out = {}
    for name in saes:
        inc, inc_se = mean_and_se(ce[name] - ce["clean"])
        out[name] = {"clean": ce["clean"].mean().item(), "sae": ce[name].mean().item(), "zero": ce["zero"].mean().item(),
                     "increase": inc, "increase_se": inc_se, "n_windows": len(ce["clean"]),
                     "loss_recovered": ((ce["zero"].mean() - ce[name].mean()) /
                                        (ce["zero"].mean() - ce["clean"].mean())).item()}
    return out


@torch.no_grad()
def top_activating_examples(sae, acts: Tensor, token_ids: Tensor, positions: Tensor, tokenizer, latents: list[int],
                            k: int = 5, context: int = 12) -> dict[int, list[dict]]:
    """For each latent, the k held-out tokens where it fires most, with up to `context` preceding cached
    tokens of the same window."""
    feats = torch.cat([f[:, latents] for f in encode_batches(sae, acts)])
    out = {}
    for j, latent in enumerate(latents):
        values, idx = feats[:, j].topk(min(k, len(feats)))
        rows = []
        for v, i in zip(values.tolist(), idx.tolist()):
            if v <= 0:
                break
            start = i
            while start > max(0, i - context) and positions[start - 1] < positions[start]:
                start -= 1
            before = tokenizer.decode(token_ids[start:i].tolist())
            rows.append({"activation": v, "before": before, "token": tokenizer.decode([int(token_ids[i])])})
        out[latent] = rows
    return out


def examples_html(examples: dict[int, list[dict]], title: str) -> str:
    """Top-activating examples as HTML, the activating token highlighted."""
    parts = [f"<h3>{html.escape(title)}</h3>"]
    for latent, rows in examples.items():
        parts.append(f"<b>latent {latent}</b>" + ("" if rows else " (never fires on held-out data)") + "<ul>")
        for r in rows:
            parts.append(f"<li><code>{r['activation']:.2f}</code> {html.escape(r['before'])}"
                         f"<mark><b>{html.escape(r['token'])}</b></mark></li>")
        parts.append("</ul>")
    return "\n".join(parts)


def train_matched(caches: dict[str, ActivationCache], heldout: dict[str, Tensor], sae_cfg: SAEConfig,
                  target_l0: float, tolerance: float = 0.15, max_rounds: int = 3, slope: float = -0.9,
                  seed: int = 0, device: str = "cpu", rounds: dict[str, Path] | None = None,
                  rounds_key: dict | None = None) -> tuple[dict, dict, dict, list[dict]]:
    """Train one SAE per corpus at full length and tune each one's L1 coefficient until its L0 on its own
    held-out data is within a factor sqrt(1 + tolerance) of `target_l0` (so two such SAEs differ by at most
    `tolerance`).

    The search runs at full length because L0 keeps falling as training goes on (a short sweep gets the
    level wrong). Round 1 uses `sae_cfg.l1_coefficient`; each later round retrains the SAEs outside the band
    with the coefficient moved along log L0 = a + slope * log coefficient: `slope` after one run (the
    offline run measured -0.85 to -0.87 at full length), the secant through its last two runs after that.
    TopK variants (L0 = k) train once. Each corpus keeps the run whose L0 is closest to the target (in log
    terms), not necessarily the last. `heldout` should be a tuning part of the held-out data that the final
    evaluation does not use. `rounds` (a folder per corpus) keeps each finished run there (`<round>/`: the SAE and
    `round.json`, written last); a run found there with the same `rounds_key` and coefficient is loaded instead of
    trained, so a search killed in its third run resumes at the third run, from that run's checkpoint
    (`<round>-in-progress/`, saved every ten minutes: `train_sae`) when it has one.
    Returns (saes, histories, coefficients, log of every run; the kept runs have "kept": True)."""
    import shutil
    from dataclasses import replace

    from helpers.files import atomic_write_json

    l1 = {c: sae_cfg.l1_coefficient for c in caches}
    band = math.log(1 + tolerance) / 2
    saes, histories, log = {}, {}, []
    points: dict[str, list[tuple[float, float]]] = {c: [] for c in caches}  # (log coefficient, log L0)

    best: dict[str, tuple[float, float]] = {}  # corpus -> (distance from target in log L0, coefficient)
    want = json.loads(json.dumps(rounds_key, default=float))  # as round.json holds it (tuples become lists)

    def fit(corpus: str) -> None:
        n = len(points[corpus]) + 1
        folder = Path(rounds[corpus]) / str(n) if rounds else None
        saved = json.loads((folder / "round.json").read_text()) if folder and (folder / "round.json").exists() else {}
        in_progress = Path(rounds[corpus]) / f"{n}-in-progress" if rounds else None  # the run's checkpoint
        if saved.get("key") == want and saved.get("l1_coefficient") == l1[corpus]:
            sae = load_sae(folder, device=device)
            tqdm.write(f"{corpus}: run {n} of the L0 search found in {folder}: not trained again")
            history, seconds, l0, ev = saved["history"], saved["seconds"], saved["l0"], saved["explained_variance"]
        else:
            sae, history, seconds = train_sae(caches[corpus], replace(sae_cfg, l1_coefficient=l1[corpus]), seed=seed,
                                               device=device, **({"checkpoint": in_progress, "checkpoint_key": want}
                                                                 if folder else {}))
            stats = reconstruction_stats(sae, heldout[corpus])
            l0, ev = stats.l0, stats.explained_variance
            if folder:
                (folder / "round.json").unlink(missing_ok=True)
                save_sae(sae, folder)
                atomic_write_json(folder / "round.json", {"key": rounds_key, "l1_coefficient": l1[corpus], "l0": l0,
                                                          "explained_variance": ev, "seconds": seconds,
                                                          "history": history})
                shutil.rmtree(in_progress, ignore_errors=True)
        y = math.log(max(l0, 1e-3))
        points[corpus].append((math.log(l1[corpus]), y))
        log.append({"corpus": corpus, "round": n, "l1_coefficient": l1[corpus], "l0": l0,
                    "explained_variance": ev, "seconds": seconds, "kept": False})
        distance = abs(y - math.log(target_l0))
        if corpus not in best or distance < best[corpus][0]:
            best[corpus] = (distance, l1[corpus])
            saes[corpus], histories[corpus] = sae, {"history": history, "seconds": seconds}
            for row in log:
                if row["corpus"] == corpus:
                    row["kept"] = row is log[-1]

    if sae_cfg.architecture in ("topk", "batchtopk"):
        max_rounds = 1  # L0 is k by construction: nothing to tune
    todo = list(caches)
    for round_ in range(max_rounds):
        for corpus in tqdm(todo, desc=f"round {round_ + 1}: training", leave=False):
            fit(corpus)
        todo = [c for c in caches if abs(points[c][-1][1] - math.log(target_l0)) > band]
        if not todo or round_ == max_rounds - 1:
            break
        for c in todo:
            x1, y1 = points[c][-1]
            s = slope
            if len(points[c]) > 1 and points[c][-2][0] != x1:
                x0, y0 = points[c][-2]
                s = (y1 - y0) / (x1 - x0)
            l1[c] = math.exp(x1 + (math.log(target_l0) - y1) / min(s, -0.1))  # guard: flat or inverted
    return saes, histories, {c: best[c][1] for c in caches}, log


# Bump when a code change alters what training produces for the same key
TRAINING_FORMAT = 2


def training_key(sae_cfg: SAEConfig, cache, target_l0: float, tolerance: float, max_rounds: int, seed: int) -> dict:
    """What decides a trained SAE: its configuration (the L1 coefficient as the search's start), the cache(s) it
    reads (their folders, named relative to the run folder: they encode the cache settings, so a moved clone reuses;
    and each cache's id, new whenever a cache is made again), the tokens read, the L0 search, the versions of the
    libraries that train (torch, sae_lens) and `TRAINING_FORMAT`. Equal keys: reuse the saved SAE."""
    from dataclasses import asdict

    import sae_lens

    caches = getattr(cache, "caches", [cache])  # a MixedCache's parts, or the cache itself
    return {"sae_config": asdict(sae_cfg), "caches": [f"{Path(c.folder).parent.name}/{Path(c.folder).name}" for c in caches],
            "cache_ids": [c.manifest.cache_id for c in caches], "cache_tokens": cache.n_tokens,
            "target_l0": target_l0, "tolerance": tolerance, "max_rounds": max_rounds, "seed": seed,
            "versions": {"torch": torch.__version__, "sae_lens": sae_lens.__version__}, "format": TRAINING_FORMAT}


def train_or_reuse(name: str, cache, heldout_tune: Tensor, sae_cfg: SAEConfig, folder: Path, target_l0: float,
                   tolerance: float = 0.15, max_rounds: int = 3, seed: int = 0, force: bool = False,
                   device: str = "cpu") -> tuple[list, bool]:
    """Train one SAE with the full-length L0 search (`train_matched`) and save it to `folder`, unless `folder`
    already holds one trained with the same `training_key` (then nothing is trained). Returns (its log rows,
    whether it was reused). `training.json`, which holds the key, is written last, so a run killed while saving
    is retrained, not reused; each finished run of the search is kept in `folder/rounds/` until then, so a killed
    search resumes at the run it was in."""
    import shutil
    from dataclasses import asdict, replace

    folder = Path(folder)
    key = training_key(sae_cfg, cache, target_l0, tolerance, max_rounds, seed)
    record = folder / "training.json"
    if not force and record.exists() and (folder / "sae_weights.safetensors").exists():
        saved = json.loads(record.read_text())
        if saved.get("key") == key:
            return saved["log"], True
    record.unlink(missing_ok=True)
    if force:
        shutil.rmtree(folder / "rounds", ignore_errors=True)
    saes, histories, l1, log = train_matched({name: cache}, {name: heldout_tune}, sae_cfg, target_l0,
                                             tolerance=tolerance, max_rounds=max_rounds, seed=seed, device=device,
                                             rounds={name: folder / "rounds"}, rounds_key=key)
    save_sae(saes[name], folder)
    from helpers.files import atomic_write_json

    atomic_write_json(record, {"name": name, "key": key, "log": log,
                               "sae_config": asdict(replace(sae_cfg, l1_coefficient=l1[name])), **histories[name]})
    shutil.rmtree(folder / "rounds", ignore_errors=True)
    return log, False
