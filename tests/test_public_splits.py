"""Arditi et al.'s headline on the public splits (`helpers.public_splits`): which prompts, which conditions."""

import pytest
import torch

from conftest import FIXTURE
from helpers.generation import generate
from helpers.hooks import Intervention
from helpers.instructions import InstructionDataError, read_instruction_file
from helpers.public_splits import FILES, evaluate_public, public_prompts


def test_public_prompts_take_each_split_spread_over_categories(instruction_dir):
    prompts = public_prompts(instruction_dir, 3)
    assert list(prompts) == ["harmful · harmful_val", "harmful · harmful_train", "harmless · harmless_val"]
    assert all(len(v) == 3 for v in prompts.values())
    val = {it["instruction"]: it["category"] for it in read_instruction_file(f"{instruction_dir}/harmful_val.json")}
    cats = [val[p] for p in prompts["harmful · harmful_val"]]
    assert len(set(cats)) == 3, "three prompts from three categories before any category repeats"
    assert public_prompts(instruction_dir, 3) == prompts, "deterministic"
    everything = public_prompts(instruction_dir, 100_000)
    assert {k: len(v) for k, v in everything.items()} == {
        f"{side} · {f[:-5]}": len(read_instruction_file(f"{instruction_dir}/{f}")) for f, side in FILES.items()}


def test_public_prompts_without_the_folder_or_its_files(tmp_path):
    assert public_prompts(tmp_path / "absent", 4) is None, "a plain clone has no public splits: skip, not fail"
    with pytest.raises(InstructionDataError, match="holds none of"):
        public_prompts(tmp_path, 4)
    with pytest.raises(ValueError, match="positive integer"):
        public_prompts(FIXTURE, 0)


@pytest.mark.slow
def test_evaluate_public_runs_the_headline_conditions(model):
    prompts = public_prompts(FIXTURE, 2)
    layer = 8
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    direction = 60 * direction / direction.norm()  # large enough that adding it must change what the model says
    out = evaluate_public(model, direction, layer, prompts, max_new_tokens=6, batch_size=4)
    assert {k: list(v) for k, v in out.items()} == {
        "harmful · harmful_val": ["none", "ablation"], "harmful · harmful_train": ["none", "ablation"],
        "harmless · harmless_val": ["none", "actadd"]}
    harmless = prompts["harmless · harmless_val"]
    assert out["harmless · harmless_val"]["none"]["completions"] == generate(model, harmless, Intervention(),
                                                                             max_new_tokens=6, batch_size=4,
                                                                             progress=False)
    assert out["harmless · harmless_val"]["actadd"]["completions"] != out["harmless · harmless_val"]["none"]["completions"]
    assert all(v[c]["substring"]["n"] == 2 for v in out.values() for c in v)


def test_kissane_split_is_sklearns_train_test_split():
    """Reference lists printed once by sklearn 1.x: train_test_split([f'x{i}' for i in range(13)], test_size=0.2,
    random_state=42), and the first 8 of the train part for 520 items (AdvBench's size)."""
    from helpers.public_splits import kissane_split

    train, test = kissane_split([f"x{i}" for i in range(13)])
    assert train == ['x8', 'x5', 'x2', 'x1', 'x12', 'x4', 'x7', 'x10', 'x3', 'x6'] and test == ['x11', 'x9', 'x0']
    train, _ = kissane_split([f"x{i}" for i in range(520)])
    assert train[:8] == ['x434', 'x436', 'x208', 'x332', 'x220', 'x502', 'x324', 'x184'] and len(train) == 416


def test_kissane_prompts_from_a_folder_or_none(instruction_dir, tmp_path):
    from helpers.public_splits import kissane_prompts

    assert kissane_prompts(tmp_path / "absent") is None
    got = kissane_prompts(instruction_dir, n=3)
    assert set(got) == {"harmful", "harmless"} and all(len(v) == 3 for v in got.values())
    assert len(set(got["harmful"]) & set(got["harmless"])) == 0
