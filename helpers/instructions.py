"""Instruction sets: the project's own harmful/harmless sets and loaders for the public benchmarks.

- `load_instructions("harmful", split="train")`: our own sets in `data/instructions/`, written
  for this project (200 harmful over 10 categories, 200 harmless of matched length and form),
  with deterministic, category-stratified 60/20/20 train/val/test splits.
- `load_instructions("advbench", path=...)`: a public set from a local JSON file
  `[{"instruction": str, "category": str|null}]`, or (online, no `path`) from its public source.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def _data_root() -> Path:
    """The project's `data/` folder: `helpers/data/` in an installed wheel (setuptools maps `data/` there), else the
    checkout's top-level `data/` (editable installs and a plain clone). One copy either way."""
    here = Path(__file__).resolve().parent
    for root in (here / "data", here.parent / "data"):
        if (root / "instructions").is_dir():
            return root
    raise FileNotFoundError(f"No data/instructions/ beside {here}: the checkout or install is incomplete; "
                            "reinstall the package (pip install .) or clone the repository again.")


DATA_ROOT = _data_root()
DATA_DIR = DATA_ROOT / "instructions"
PUBLIC_ENV_VAR = "REFUSAL_PUBLIC_INSTRUCTIONS"


def public_splits_folder() -> Path:
    """Where Arditi et al.'s public splits are looked for: `$REFUSAL_PUBLIC_INSTRUCTIONS`, else
    `shared/data/instructions` beside the clone (this project's machines keep a copy there; a user's clone has none,
    and the sections that use them are skipped)."""
    return Path(os.environ.get(PUBLIC_ENV_VAR) or Path(__file__).resolve().parents[2] / "shared" / "data" / "instructions")


PROCESSED_ENV_VAR = "REFUSAL_PROCESSED_INSTRUCTIONS"


def processed_folder() -> Path:
    """Where the whole AdvBench and Alpaca lists (`advbench.json`, `alpaca.json`) are looked for:
    `$REFUSAL_PROCESSED_INSTRUCTIONS`, else `processed/` beside the public splits' folder, as in
    andyrdt/refusal_direction's `dataset/` (its `splits/` and `processed/`)."""
    return Path(os.environ.get(PROCESSED_ENV_VAR) or public_splits_folder().parent / "processed")


OWN_SETS = ("harmful", "harmless")
SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}
SPLIT_SEED = 1234


@dataclass(frozen=True)
class PublicSource:
    """Where a public benchmark lives online and how to read it."""

    url: str
    kind: str  # "csv", "json", "txt" or "hub"
    field: str = ""
    category_field: str | None = None
    description: str = ""


PUBLIC_SETS: dict[str, PublicSource] = {
    "advbench": PublicSource(
        "https://raw.githubusercontent.com/llm-attacks/llm-attacks/main/data/advbench/harmful_behaviors.csv",
        "csv", "goal", None, "AdvBench harmful behaviours (Zou et al. 2023), 520 items, MIT"),
    "harmbench": PublicSource(
        "https://raw.githubusercontent.com/centerforaisafety/HarmBench/main/data/behavior_datasets/"
        "harmbench_behaviors_text_all.csv",
        "csv", "Behavior", "SemanticCategory", "HarmBench standard text behaviours (Mazeika et al. 2024), MIT"),
    "jailbreakbench": PublicSource(
        "JailbreakBench/JBB-Behaviors", "hub", "Goal", "Category",
        "JailbreakBench harmful behaviours (Chao et al. 2024), 100 items, MIT"),
    "maliciousinstruct": PublicSource(
        "https://raw.githubusercontent.com/Princeton-SysML/Jailbreak_LLM/main/data/MaliciousInstruct.txt",
        "txt", "", None, "MaliciousInstruct (Huang et al. 2023), 100 items"),
    "tdc2023": PublicSource(
        "https://raw.githubusercontent.com/centerforaisafety/tdc2023-starter-kit/main/red_teaming/data/dev/"
        "behaviors.json",
        "json", "", None, "TDC 2023 red-teaming behaviours (dev), MIT"),
    "alpaca": PublicSource(
        "tatsu-lab/alpaca", "hub", "instruction", None,
        "Alpaca instructions without input (Taori et al. 2023), CC BY-NC 4.0"),
}


class InstructionDataError(ValueError):
    """An instruction file is missing, unreadable, empty or in the wrong format."""


def read_instruction_file(path: str | Path) -> list[dict]:
    """Read and validate `[{"instruction": str, "category": str|null}, ...]`."""
    path = Path(path)
    expected = 'a JSON list like [{"instruction": "...", "category": "..." or null}]'
    if not path.is_file():
        raise InstructionDataError(f"Instruction file {path} does not exist; expected {expected}.")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InstructionDataError(f"{path} is not valid JSON ({e}); expected {expected}.") from e
    if not isinstance(items, list):
        raise InstructionDataError(f"{path} holds a {type(items).__name__}, expected {expected}.")
    if not items:
        raise InstructionDataError(f"{path} is an empty list; expected at least one instruction.")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("instruction"), str) or not item["instruction"].strip():
            raise InstructionDataError(f"{path}: item {i} is {item!r}; expected {expected}.")
        if not isinstance(item.get("category"), (str, type(None))):
            raise InstructionDataError(f"{path}: item {i} has category {item.get('category')!r}; expected a string or null.")
    return [{"instruction": it["instruction"], "category": it.get("category")} for it in items]


def split_items(items: list[dict], split: str, seed: int = SPLIT_SEED) -> list[dict]:
    """Deterministic 60/20/20 split, stratified by category (each category is split on its own)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid splits: {list(SPLITS)} (or None for all)")
    by_cat: dict[str, list[dict]] = {}
    for it in items:
        by_cat.setdefault(str(it["category"]), []).append(it)
    chosen = []
    for cat in sorted(by_cat):
        group = sorted(by_cat[cat], key=lambda it: it["instruction"])
        random.Random(f"{seed}:{cat}").shuffle(group)
        n_train = round(len(group) * SPLITS["train"])
        n_val = round(len(group) * SPLITS["val"])
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(group))}
        lo, hi = bounds[split]
        chosen.extend(group[lo:hi])
    return chosen


def balanced_sample(items: list[dict], n: int) -> list[dict]:
    """`n` items spread evenly over the categories, deterministically: round-robin over the categories
    (sorted by name), each category's items in their given order. A category that runs out is skipped."""
    by_cat: dict[str, list[dict]] = {}
    for it in items:
        by_cat.setdefault(str(it["category"]), []).append(it)
    queues = [by_cat[c] for c in sorted(by_cat)]
    chosen: list[dict] = []
    depth = 0
    while len(chosen) < n:
        for q in queues:
            if depth < len(q) and len(chosen) < n:
                chosen.append(q[depth])
        depth += 1
    return chosen


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - fixed public URLs
        return response.read().decode("utf-8")


def _download_public(name: str) -> list[dict]:
    src = PUBLIC_SETS[name]
    if src.kind == "hub":
        import datasets

        if name == "jailbreakbench":
            ds = datasets.load_dataset(src.url, "behaviors", split="harmful")
        else:
            ds = datasets.load_dataset(src.url, split="train").filter(lambda r: not r["input"].strip())
        return [{"instruction": r[src.field], "category": r[src.category_field] if src.category_field else None}
                for r in ds]
    text = _fetch(src.url)
    if src.kind == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if name == "harmbench":
            rows = [r for r in rows if r.get("FunctionalCategory") == "standard"]
        return [{"instruction": r[src.field], "category": r.get(src.category_field) if src.category_field else None}
                for r in rows]
    if src.kind == "json":
        return [{"instruction": s, "category": None} for s in json.loads(text)]
    return [{"instruction": line.strip(), "category": None} for line in text.splitlines() if line.strip()]


def load_instructions(name: str, split: str | None = None, path: str | Path | None = None,
                      n: int | None = None) -> list[dict]:
    """Instructions as `[{"instruction", "category"}]`.

    `name`: "harmful" / "harmless" (ours, bundled) or a public set (advbench, harmbench,
    jailbreakbench, maliciousinstruct, tdc2023, alpaca).  `path`: read a local JSON file
    instead (any name).  `split`: train / val / test (deterministic), or None for all.
    `n`: a deterministic sample of n balanced across categories (`balanced_sample`), or None for all;
    more than there are is an error that says how many there are.
    """
    if not isinstance(name, str):
        raise TypeError(f"load_instructions takes the set's name as a string, got {type(name).__name__}.")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive integer or None (all), got {n!r}.")
    name = name.lower()
    if path is not None:
        items = read_instruction_file(path)
    elif name in OWN_SETS:
        items = read_instruction_file(DATA_DIR / f"{name}.json")
    elif name in PUBLIC_SETS:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise InstructionDataError(
                f"{name} is not bundled and this session is offline (HF_HUB_OFFLINE=1). Pass path= to a local "
                'JSON file [{"instruction": ..., "category": ...}], or use the bundled sets: '
                "load_instructions('harmful') / load_instructions('harmless').")
        try:
            items = _download_public(name)
        except Exception as e:  # noqa: BLE001 - any network failure gets the same advice
            raise InstructionDataError(
                f"Could not download {name} ({e}). Offline? Pass path= to a local JSON file, or use the bundled "
                "sets load_instructions('harmful') / load_instructions('harmless').") from e
    else:
        raise ValueError(f"Unknown instruction set {name!r}; valid: {list(OWN_SETS) + list(PUBLIC_SETS)}")
    if split is not None:
        items = split_items(items, split)
    if not items:
        raise InstructionDataError(f"Instruction set {name!r} split {split!r} is empty.")
    if n is None:
        return items
    if n > len(items):
        raise InstructionDataError(f"Asked for n={n} instructions but {name!r} split {split!r} holds {len(items)}; "
                                   f"pass n <= {len(items)} or n=None for all.")
    return balanced_sample(items, n)


def case_studies() -> list[str]:
    """Lee, Breck & Arditi's (2025) three prompts whose refusal hinges on one prompt-specific feature
    (`data/instructions/case_studies.json`)."""
    return instructions_only(read_instruction_file(DATA_DIR / "case_studies.json"))


def paraphrases() -> dict[str, list[str]]:
    """Requests worded several ways (`data/instructions/paraphrases.json`): `{"<kind>/<request>": [wordings]}`, kinds
    `lee` (Lee, Breck & Arditi's case prompts), `harmful` (refused) and `harmless` (over-refusal bait)."""
    out: dict[str, list[str]] = {}
    for item in read_instruction_file(DATA_DIR / "paraphrases.json"):
        out.setdefault(item["category"], []).append(item["instruction"])
    return out


def instructions_only(items: list[dict]) -> list[str]:
    """Just the instruction strings."""
    return [it["instruction"] for it in items]


def check_instructions(instructions, what: str = "instructions") -> list[str]:
    """`instructions` if it is a non-empty list of non-empty strings, else a one-line error saying what to pass.
    (A bare string would otherwise be taken one character at a time.)"""
    if isinstance(instructions, str):
        raise TypeError(f"{what} must be a list of strings, got one string ({instructions[:40]!r}); wrap it: [text].")
    if not isinstance(instructions, (list, tuple)) or not instructions:
        raise TypeError(f"{what} must be a non-empty list of strings, got {type(instructions).__name__} "
                        f"{instructions!r:.60}.")
    bad = [i for i, s in enumerate(instructions) if not isinstance(s, str)]
    if bad:
        raise TypeError(f"{what}[{bad[0]}] is a {type(instructions[bad[0]]).__name__}, not a string; pass strings "
                        "(instructions_only(load_instructions(...)) gives them).")
    return list(instructions)
