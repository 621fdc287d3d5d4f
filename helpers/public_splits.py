"""Arditi et al.'s public splits, for their headline beside ours: ablate r on public harmful prompts, add it to
public harmless ones.

The splits are the JSON files of andyrdt/refusal_direction's `dataset/splits` in the loaders' format
(`[{"instruction", "category"}]`): `harmful_train.json` (AdvBench, MaliciousInstruct, TDC 2023 and HarmBench
prompts), `harmful_val.json` (HarmBench's validation behaviours, with categories) and `harmless_val.json` (Alpaca).
They are not in this repository (licences differ); point `folder` at a copy. Arditi et al. evaluate on
JailbreakBench, which is not among these files: `harmful_val` stands closest to it (HarmBench, categorised).
Nothing here was used to choose our direction, so every file is held out for it.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from helpers.evaluation import conditions, evaluate_refusal
from helpers.instructions import InstructionDataError, balanced_sample, instructions_only, read_instruction_file
from helpers.models import LoadedModel

# file -> the side it stands for; evaluated in this order
FILES = {"harmful_val.json": "harmful", "harmful_train.json": "harmful", "harmless_val.json": "harmless"}
# the interventions of Arditi et al.'s headline, per side
CONDITIONS = {"harmful": ("none", "ablation"), "harmless": ("none", "actadd")}


def kissane_split(items: list, test_size: float = 0.2, seed: int = 42) -> tuple[list, list]:
    """(train, test) as sklearn's `train_test_split(items, test_size=0.2, random_state=42)` cuts them, which is how
    Kissane et al.'s code splits AdvBench and Alpaca: numpy's `RandomState(seed).permutation`, the first
    ceil(test_size·n) indices the test part, the rest the train part (the same lists, without sklearn)."""
    import math

    import numpy as np

    n_test = math.ceil(test_size * len(items))
    perm = np.random.RandomState(seed).permutation(len(items))
    return [items[i] for i in perm[n_test:]], [items[i] for i in perm[:n_test]]


def kissane_prompts(folder: str | Path, n: int = 64) -> dict[str, list[str]] | None:
    """Kissane et al.'s kind of prompts from the public splits in `folder`: their split (`kissane_split`) of the
    AdvBench-style harmful file (`harmful_train.json`) and of the Alpaca file (`harmless_train.json`), the first `n`
    of each train part, as their code takes the first 64. None when `folder` or a file is missing."""
    folder = Path(folder)
    files = {"harmful": folder / "harmful_train.json", "harmless": folder / "harmless_train.json"}
    if not all(f.is_file() for f in files.values()):
        return None
    out = {}
    for side, f in files.items():
        train = kissane_split(instructions_only(read_instruction_file(f)))[0]
        if len(train) < n:
            raise InstructionDataError(f"{f} leaves {len(train)} training prompts after Kissane et al.'s split; "
                                       f"ask for n <= {len(train)}.")
        out[side] = train[:n]
    return out


def public_prompts(folder: str | Path, n: int) -> dict[str, list[str]] | None:
    """Up to `n` prompts from each public split in `folder` (`balanced_sample`: spread over categories,
    deterministic), keyed `"<side> · <file stem>"`; None when `folder` does not exist (a plain clone has none)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = {f: side for f, side in FILES.items() if (folder / f).is_file()}
    if not found:
        raise InstructionDataError(f"{folder} holds none of {list(FILES)}; point it at a folder of Arditi et al.'s "
                                   "splits in the loaders' JSON format, or at a folder that does not exist to skip.")
    out = {}
    for f, side in found.items():
        items = read_instruction_file(folder / f)
        out[f"{side} · {Path(f).stem}"] = instructions_only(balanced_sample(items, min(n, len(items))))
    return out


def evaluate_public(model: LoadedModel, direction: Tensor, layer: int, prompts: dict[str, list[str]],
                    max_new_tokens: int, batch_size: int) -> dict[str, dict[str, dict]]:
    """`evaluation.evaluate_refusal` on each split of `public_prompts`: harmful splits with no intervention and
    with r ablated, harmless ones with no intervention and with r added at `layer`."""
    ivs = conditions(direction, layer)
    out = {}
    for key, instructions in prompts.items():
        side = key.split(" · ")[0]
        print(f"{key} (n={len(instructions)}):")
        out[key] = evaluate_refusal(model, instructions, {c: ivs[c] for c in CONDITIONS[side]}, max_new_tokens,
                                    batch_size)
    return out
