"""Kissane et al.'s own SAEs (Qwen1.5-0.5B(-Chat), `blocks.13.hook_resid_pre`, 32,768 latents), loaded into sae_lens 6.

They were released as public Weights & Biases artifacts, saved by the sae_lens of mid-2024 (`cfg.json` with the
hook at the top level, `sae_weights.safetensors` with `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_in]`, `b_enc`,
`b_dec`), trained on activations scaled by an estimated norm scaling factor that sae_lens then folded into the
weights, except `b_dec` ("due to SAE Lens bug", their code's comment). Their code therefore divides `b_dec` by the
factor and folds the decoder norms into the encoder; `convert_legacy_sae` does the same and returns a sae_lens 6
`StandardSAE` in the model's units with unit decoder rows.

`fetch(name, folder)` downloads one through the wandb API (online, `pip install wandb`); a folder already holding
the older layout is converted without any download. Nothing in this project's test machines reaches wandb: the
conversion is tested on a fixture written in the older layout (tests/test_pretrained.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Artifact:
    project: str
    name: str
    version: str
    model: str
    corpus: str
    norm_scaling_factor: float  # from Kissane et al.'s evaluation code

    @property
    def path(self) -> str:
        return f"ckkissane/{self.project}/{self.name}:{self.version}"


_CHAT, _BASE = "sae_qwen1.5-0.5b-chat_blocks.13.hook_resid_pre_32768", "sae_qwen1.5-0.5b_blocks.13.hook_resid_pre_32768"
# Our names: <corpus> for the chat model's SAEs, base_<corpus> for the base model's (as notebook 02 names them).
KISSANE_SAES: dict[str, Artifact] = {
    "chat": Artifact("qwen-500M-chat-lmsys-1m-anthropic", _CHAT, "v11", "Qwen/Qwen1.5-0.5B-Chat",
                     "LmSys-Chat-1M", 1.5326804001319736),
    "webtext_chat": Artifact("qwen-500M-chat-pile-inst-format-with-assistant", _CHAT, "v3", "Qwen/Qwen1.5-0.5B-Chat",
                             "the Pile, chat format with assistant", 1.573157268076237),
    "base_chat": Artifact("qwen-500M-base-lmsys-1m", _BASE, "v3", "Qwen/Qwen1.5-0.5B", "LmSys-Chat-1M",
                          1.875230672855483),
    "base_webtext_chat": Artifact("qwen-500M-base-pile-inst-format-with-assistant", _BASE, "v3", "Qwen/Qwen1.5-0.5B",
                                  "the Pile, chat format with assistant", 1.944763706304832),
}
LEGACY_TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec")
# sae_lens folds the norm scaling factor into b_dec too from this version on, so dividing b_dec again would be wrong
B_DEC_FOLDED_FROM = (4, 0, 10)


class LegacySAEError(ValueError):
    """A folder that does not hold an SAE in the older sae_lens layout we can convert."""


def is_legacy_folder(folder: str | Path) -> bool:
    """Whether `folder` holds an SAE saved by an older sae_lens (hook name at the top of `cfg.json`, no
    `metadata` block), rather than by sae_lens 6."""
    cfg = Path(folder) / "cfg.json"
    if not cfg.is_file():
        return False
    d = json.loads(cfg.read_text())
    return "metadata" not in d and ("hook_name" in d or "hook_point" in d)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("+")[0].split(".")[:3] if p.isdigit())


def convert_legacy_sae(folder: str | Path, norm_scaling_factor: float | None, device: str = "cpu",
                       model_name: str | None = None):
    """The SAE in `folder` (older sae_lens layout) as a sae_lens 6 `StandardSAE` in the model's units: `b_dec`
    divided by `norm_scaling_factor` (the factor training scaled activations by; None when the SAE was trained
    without one), then the decoder norms folded into the encoder (unit decoder rows, the same reconstructions).
    `model_name` (the hub name, as notebook 02 records its own SAEs' model) replaces cfg.json's, which older
    sae_lens wrote in TransformerLens' spelling. The b_dec rule fits SAEs trained before sae_lens 4.0.10 (read from
    cfg.json's `sae_lens_training_version`); a later version is refused."""
    from safetensors.torch import load_file
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    folder = Path(folder)
    if not is_legacy_folder(folder):
        raise LegacySAEError(f"{folder} holds no SAE in the older sae_lens layout (cfg.json with hook_name and no "
                             "metadata); sae_lens 6 folders load with helpers.saes.load_sae directly.")
    cfg = json.loads((folder / "cfg.json").read_text())
    weights = folder / "sae_weights.safetensors"
    if not weights.is_file():
        raise LegacySAEError(f"{folder} has a cfg.json but no sae_weights.safetensors; download the artifact again.")
    if cfg.get("activation_fn_str", "relu") != "relu" or cfg.get("architecture", "standard") != "standard":
        raise LegacySAEError(f"{folder}: only ReLU 'standard' SAEs convert (got activation "
                             f"{cfg.get('activation_fn_str')!r}, architecture {cfg.get('architecture')!r}).")
    if norm_scaling_factor is None and cfg.get("normalize_activations") not in (None, "none"):
        raise LegacySAEError(f"{folder} was trained with normalize_activations={cfg['normalize_activations']!r}: "
                             "pass its norm_scaling_factor (KISSANE_SAES lists Kissane et al.'s).")
    trained_with = cfg.get("sae_lens_training_version")
    if norm_scaling_factor is not None and trained_with and _version(str(trained_with)) >= B_DEC_FOLDED_FROM:
        raise LegacySAEError(f"{folder} was trained with sae_lens {trained_with}, which already folds the norm "
                             "scaling factor into b_dec (from 4.0.10 on): Kissane et al.'s b_dec / s rule would scale "
                             "it twice.")
    if norm_scaling_factor is not None and not trained_with:
        print(f"{folder}: cfg.json does not say which sae_lens trained it; dividing b_dec by {norm_scaling_factor:.4f} "
              "as Kissane et al.'s code does for their mid-2024 (sae_lens 3.x) SAEs.")
    t = load_file(str(weights))
    missing = [k for k in LEGACY_TENSORS if k not in t]
    if missing:
        raise LegacySAEError(f"{weights} lacks {missing}; it is not a standard sae_lens SAE.")
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    wrong = {k: tuple(t[k].shape) for k, s in shapes.items() if tuple(t[k].shape) != s}
    if wrong:
        raise LegacySAEError(f"{weights}: shapes {wrong} do not match cfg.json's d_in={d_in}, d_sae={d_sae}.")
    W_enc, W_dec, b_enc, b_dec = (t[k].double() for k in LEGACY_TENSORS)
    if norm_scaling_factor is not None:
        b_dec = b_dec / float(norm_scaling_factor)
    norms = W_dec.norm(dim=-1).clamp_min(1e-12)
    W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    meta = SAEMetadata(hook_name=cfg.get("hook_name") or cfg["hook_point"],
                       model_name=model_name or cfg.get("model_name"),
                       converted_from=str(folder), norm_scaling_factor=norm_scaling_factor)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32", device=device,
                                        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
                                        normalize_activations="none", metadata=meta))
    with torch.no_grad():
        for name, value in zip(LEGACY_TENSORS, (W_enc, W_dec, b_enc, b_dec)):
            getattr(sae, name).copy_(value.float())
    return sae


def fetch(name: str, folder: str | Path, device: str = "cpu"):
    """Kissane et al.'s SAE `name` (a key of KISSANE_SAES) from `folder`, downloading it there through the wandb
    API first when the folder holds none. Returns the converted sae_lens 6 SAE."""
    if name not in KISSANE_SAES:
        raise KeyError(f"No released SAE named {name!r}; Kissane et al. released {sorted(KISSANE_SAES)}.")
    art, folder = KISSANE_SAES[name], Path(folder)
    if not is_legacy_folder(folder):
        try:
            import wandb
        except ImportError:
            raise ImportError(f"Downloading {art.path} needs wandb: `pip install wandb`, or put the artifact's "
                              f"files (cfg.json, sae_weights.safetensors) in {folder}.") from None
        folder.mkdir(parents=True, exist_ok=True)
        wandb.Api().artifact(art.path).download(root=str(folder))
    return convert_legacy_sae(folder, art.norm_scaling_factor, device=device, model_name=art.model)


def install(name: str, run_dir: str | Path, download_dir: str | Path, device: str = "cpu") -> Path:
    """Kissane et al.'s SAE `name`, fetched into `download_dir` (or found there) and saved in sae_lens 6's format
    as `run_dir/saes/<name>/`, where notebooks 04-06 read every SAE; `training.json` records where it came from
    (it was not trained here). Returns the folder."""
    from helpers.files import atomic_write_json
    from helpers.saes import save_sae

    art = KISSANE_SAES.get(name)
    if art is None:
        raise KeyError(f"No released SAE named {name!r}; Kissane et al. released {sorted(KISSANE_SAES)}.")
    sae = fetch(name, Path(download_dir) / name, device=device)
    folder = save_sae(sae, Path(run_dir) / "saes" / name)
    atomic_write_json(folder / "training.json", {
        "name": name, "pretrained": art.path, "model": art.model, "corpus": art.corpus,
        "norm_scaling_factor": art.norm_scaling_factor, "log": [], "history": [],
        "sae_config": {"l1_coefficient": 3.0, "d_sae": sae.cfg.d_sae, "training_tokens": 409_600_000}})
    return folder


MIRROR_ENV_VAR = "REFUSAL_SAE_MIRROR"


def registry_sae(release: str, sae_id: str, device: str = "cpu", mirror: str | Path | None = None):
    """An SAE from sae_lens' registry (`pretrained_saes.yaml`: a release such as "gemma-scope-2b-pt-res-canonical"
    or "llama-3.1-8b-instruct-andyrdt", and an SAE id), loaded by sae_lens' own code. With `mirror` (or
    $REFUSAL_SAE_MIRROR) only the download is replaced: each file sae_lens asks the hub for is read from
    `<mirror>/<repo_id>/<file>` (offline, a copy made earlier with `huggingface-cli download`, or the tests' fixture)."""
    from unittest import mock

    from sae_lens import SAE
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        raise ValueError(f"{release!r} is not a release in sae_lens' registry (sae_lens.loading.pretrained_saes_directory"
                         f"); e.g. {sorted(directory)[:3]}.")
    if sae_id not in directory[release].saes_map:
        ids = sorted(directory[release].saes_map)
        raise ValueError(f"{sae_id!r} is not an SAE of {release!r}; it has {len(ids)}, e.g. {ids[:3]}.")
    mirror = mirror or os.environ.get(MIRROR_ENV_VAR)
    if mirror is None:
        return SAE.from_pretrained(release, sae_id, device=device)
    root = Path(mirror)

    def local(repo_id: str, filename: str, **_) -> str:
        path = root / repo_id / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not in the SAE mirror {root}: download {repo_id}'s {filename} there "
                                    f"(huggingface-cli download {repo_id} {filename} --local-dir {root / repo_id}).")
        return str(path)

    with mock.patch.object(loaders, "hf_hub_download", local):
        return SAE.from_pretrained(release, sae_id, device=device)
