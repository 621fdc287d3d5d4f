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


# Kissane et al.'s prompt lists: side -> (file in `instructions.processed_folder()`, public set, its size)
KISSANE_LISTS = {"harmful": ("advbench.json", "advbench", 520), "harmless": ("alpaca.json", "alpaca", 31_323)}
KISSANE_SET = "AdvBench vs Alpaca (Kissane et al.'s split)"
ARDITI_MIX_SET = "Arditi et al.'s harmful_train mix vs Alpaca subset (Kissane et al.'s split)"


def kissane_prompts(folder: str | Path | None = None, n: int = 64, download: bool = False
                    ) -> dict[str, list[str]] | None:
    """Kissane et al.'s prompts: their split (`kissane_split`) of the 520 AdvBench behaviours (`advbench.json`, the
    `goal` column in file order) and of the 31,323 Alpaca instructions with an empty input (`alpaca.json`, dataset
    order), the first `n` of each train part, as their code takes the first 64.

    Read from `folder` (default `instructions.processed_folder()`); when a file is missing, downloaded with
    `load_instructions("advbench" / "alpaca")` if `download` (the paper preset on Colab), else None. A list of
    another length is an error: the same indices of another list are other prompts."""
    from helpers.instructions import load_instructions, processed_folder

    folder = Path(folder) if folder is not None else processed_folder()
    out = {}
    for side, (file, public_name, size) in KISSANE_LISTS.items():
        if (folder / file).is_file():
            items = read_instruction_file(folder / file)
        elif download:
            items = load_instructions(public_name)
        else:
            return None
        if len(items) != size:
            raise InstructionDataError(f"{folder / file if (folder / file).is_file() else public_name} holds "
                                       f"{len(items)} instructions, not {size}: Kissane et al.'s split needs the "
                                       f"whole list in its order (andyrdt/refusal_direction's dataset/processed/{file}).")
        out[side] = kissane_split(instructions_only(items))[0][:n]
    return out


def arditi_mix_prompts(folder: str | Path, n: int = 64) -> dict[str, list[str]] | None:
    """Kissane et al.'s split applied to Arditi et al.'s public splits in `folder`: `harmful_train.json` (a mix of
    AdvBench, MaliciousInstruct, TDC 2023 and HarmBench) and `harmless_train.json` (a 2,048-item Alpaca subset), the
    first `n` of each train part: their indices, other prompts. None when `folder` or a file is missing."""
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


def kissane_prompt_sets(public_folder: str | Path | None = None, n: int = 64, download: bool = False
                        ) -> dict[str, dict[str, list[str]]]:
    """The prompt sets of Kissane et al.'s protocol that are here, keyed by label: `KISSANE_SET` (their own
    prompts, `kissane_prompts`, downloaded when `download`) and `ARDITI_MIX_SET` (their split of Arditi et al.'s
    public splits in `public_folder`, `arditi_mix_prompts`). Empty on a plain offline clone."""
    from helpers.instructions import public_splits_folder

    sets = {KISSANE_SET: kissane_prompts(n=n, download=download),
            ARDITI_MIX_SET: arditi_mix_prompts(public_folder or public_splits_folder(), n)}
    return {k: v for k, v in sets.items() if v is not None}


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
