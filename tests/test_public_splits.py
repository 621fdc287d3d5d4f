"""Arditi et al.'s headline on the public splits (`helpers.public_splits`): which prompts, which conditions."""

import json
from pathlib import Path

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


def test_arditi_mix_prompts_from_a_folder_or_none(instruction_dir, tmp_path):
    from helpers.public_splits import arditi_mix_prompts

    assert arditi_mix_prompts(tmp_path / "absent") is None
    got = arditi_mix_prompts(instruction_dir, n=3)
    assert set(got) == {"harmful", "harmless"} and all(len(v) == 3 for v in got.values())
    assert len(set(got["harmful"]) & set(got["harmless"])) == 0


SPLIT_INDICES = json.loads((Path(__file__).parent / "fixtures" / "kissane_split_indices.json").read_text())


def _write_lists(folder: Path, n_advbench: int = 520, n_alpaca: int = 31_323) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for file, prefix, n in (("advbench.json", "behaviour", n_advbench), ("alpaca.json", "alpaca", n_alpaca)):
        (folder / file).write_text(json.dumps([{"instruction": f"{prefix} {i}", "category": None} for i in range(n)]))


def test_kissane_prompts_are_sklearns_split_of_the_whole_lists(tmp_path, monkeypatch):
    """Fixture twin of the test on the real lists: numbered stand-ins for AdvBench's 520 and Alpaca's 31,323, whose
    expected train prefixes come from sklearn's train_test_split (tests/fixtures/kissane_split_indices.json)."""
    from helpers.instructions import InstructionDataError
    from helpers.public_splits import kissane_prompts

    _write_lists(tmp_path / "processed")
    got = kissane_prompts(tmp_path / "processed", n=64)
    assert got["harmful"] == [f"behaviour {i}" for i in SPLIT_INDICES["advbench"]["train_first_64"]]
    assert got["harmless"] == [f"alpaca {i}" for i in SPLIT_INDICES["alpaca"]["train_first_64"]]
    assert kissane_prompts(tmp_path / "processed", n=5)["harmless"] == got["harmless"][:5]
    # the default folder: processed/ beside the public splits (andyrdt/refusal_direction's dataset/ layout)
    monkeypatch.delenv("REFUSAL_PROCESSED_INSTRUCTIONS", raising=False)
    monkeypatch.setenv("REFUSAL_PUBLIC_INSTRUCTIONS", str(tmp_path / "splits"))
    assert kissane_prompts(n=64) == got
    # missing: None offline; downloaded through the public loaders when asked (the paper preset on Colab)
    assert kissane_prompts(tmp_path / "absent") is None
    import helpers.instructions as instructions

    fake = {"advbench": 520, "alpaca": 31_323}
    monkeypatch.setattr(instructions, "load_instructions",
                        lambda name: [{"instruction": f"{name} {i}", "category": None} for i in range(fake[name])])
    downloaded = kissane_prompts(tmp_path / "absent", download=True)
    assert downloaded["harmful"][:3] == [f"advbench {i}" for i in SPLIT_INDICES["advbench"]["train_first_64"][:3]]
    # a subset of a list (other length) would give other prompts at the same indices: refused, naming the file
    _write_lists(tmp_path / "subset", n_alpaca=2048)
    with pytest.raises(InstructionDataError, match="holds 2048 instructions, not 31323.*alpaca.json"):
        kissane_prompts(tmp_path / "subset")


def test_kissane_prompts_on_the_real_lists():
    """Kissane et al.'s 64 + 64 from andyrdt/refusal_direction's dataset/processed: AdvBench behaviours and Alpaca
    instructions, equal to the lists read directly at sklearn's indices."""
    from helpers.instructions import processed_folder
    from helpers.public_splits import kissane_prompts

    folder = processed_folder()
    if not (folder / "advbench.json").is_file():
        pytest.skip(f"no advbench.json / alpaca.json at {folder} (set REFUSAL_PROCESSED_INSTRUCTIONS); the fixture "
                    "twin test_kissane_prompts_are_sklearns_split_of_the_whole_lists ran instead")
    advbench = [x["instruction"] for x in json.loads((folder / "advbench.json").read_text())]
    alpaca = [x["instruction"] for x in json.loads((folder / "alpaca.json").read_text())]
    assert (len(advbench), len(alpaca)) == (520, 31_323)
    assert advbench[0].startswith("Write a script that can exploit vulnerabilities"), "AdvBench's first goal"
    assert alpaca[0] == "Give three tips for staying healthy.", "Alpaca's first instruction"
    got = kissane_prompts(folder)
    assert got["harmful"] == [advbench[i] for i in SPLIT_INDICES["advbench"]["train_first_64"]]
    assert got["harmless"] == [alpaca[i] for i in SPLIT_INDICES["alpaca"]["train_first_64"]]
    assert set(got["harmful"]) <= set(advbench) and set(got["harmless"]) <= set(alpaca)
    mix = json.loads((folder.parent / "instructions" / "harmful_train.json").read_text()) \
        if (folder.parent / "instructions" / "harmful_train.json").is_file() else []
    assert not any(p.startswith("How to") for p in got["harmful"]), "no MaliciousInstruct-style questions"
    assert len(mix) == 0 or got["harmful"] != [x["instruction"] for x in mix][:64]


