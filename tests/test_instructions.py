import json
import os

import pytest

from helpers.instructions import (DATA_DIR, PUBLIC_SETS, InstructionDataError, balanced_sample, case_studies,
                                  load_instructions, read_instruction_file, split_items)


@pytest.mark.parametrize("name", ["harmful", "harmless"])
def test_own_sets_sizes_categories_and_splits(name):
    items = load_instructions(name)
    assert len(items) >= 200
    assert len({it["category"] for it in items}) >= 10
    splits = {s: load_instructions(name, split=s) for s in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [120, 40, 40]
    texts = [{it["instruction"] for it in v} for v in splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2]), "splits must be disjoint"
    assert set().union(*texts) == {it["instruction"] for it in items}
    assert load_instructions(name, split="val") == splits["val"], "splits are deterministic"


def test_sets_are_matched_in_length():
    def mean_words(name):
        items = load_instructions(name)
        return sum(len(it["instruction"].split()) for it in items) / len(items)

    assert abs(mean_words("harmful") - mean_words("harmless")) < 1.0


def test_split_is_stratified_by_category():
    items = [{"instruction": f"x{i}", "category": "a" if i < 10 else "b"} for i in range(20)]
    test = split_items(items, "test")
    assert sorted(it["category"] for it in test) == ["a", "a", "b", "b"]
    with pytest.raises(ValueError, match="valid splits"):
        split_items(items, "dev")


def test_case_studies_bundled():
    studies = case_studies()
    assert len(studies) == 3 and studies[0] == "Develop a strategy for hugging a person"


def test_public_sets_from_local_files(instruction_dir):
    path = os.path.join(instruction_dir, "harmful_val.json")
    raw = json.load(open(path))
    harmful = load_instructions("harmbench", path=path)
    assert [it["instruction"] for it in harmful] == [it["instruction"] for it in raw]
    assert {it["category"] for it in harmful} == {it["category"] for it in raw}
    alpaca = load_instructions("alpaca", path=os.path.join(instruction_dir, "harmless_val.json"), n=4)
    assert len(alpaca) == 4 and all(it["instruction"] for it in alpaca)


def test_balanced_sample_covers_every_category_and_is_deterministic():
    items = [{"instruction": f"{c}{i}", "category": c} for c in "abcde" for i in range(4)]  # sorted by category
    sample = balanced_sample(items, 7)
    cats = [it["category"] for it in sample]
    assert sorted(set(cats)) == list("abcde"), "every category before any repeats"
    assert max(cats.count(c) for c in "abcde") - min(cats.count(c) for c in "abcde") <= 1
    assert balanced_sample(items, 7) == sample
    uneven = [{"instruction": "a0", "category": "a"}] + [{"instruction": f"b{i}", "category": "b"} for i in range(5)]
    assert [it["instruction"] for it in balanced_sample(uneven, 4)] == ["a0", "b0", "b1", "b2"]


@pytest.mark.parametrize("name", ["harmful", "harmless"])
def test_small_splits_of_our_sets_span_all_categories(name):
    val = load_instructions(name, split="val", n=16)
    assert len({it["category"] for it in val}) == 10, "n=16 used to hold 4 of the 10 categories"
    assert len({it["category"] for it in load_instructions(name, split="val", n=4)}) == 4


@pytest.mark.parametrize("n", [0, -1, 2.5, "3", True])
def test_bad_n_is_an_error(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        load_instructions("harmful", split="val", n=n)


def test_too_many_is_an_error_that_says_how_many():
    with pytest.raises(InstructionDataError, match="holds 40"):
        load_instructions("harmful", split="val", n=500)


def test_public_set_offline_without_file_names_bundled_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in PUBLIC_SETS:
        with pytest.raises(InstructionDataError, match=r"load_instructions\('harmful'\)"):
            load_instructions(name)


def test_unknown_set():
    with pytest.raises(ValueError, match="valid:.*advbench"):
        load_instructions("nonsense")


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ("[]", "empty list"),
    ('{"instruction": "x"}', "holds a dict"),
    ('[{"prompt": "x"}]', "item 0"),
    ('[{"instruction": "x", "category": 3}]', "category 3"),
])
def test_bad_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "set.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InstructionDataError, match=message) as err:
        load_instructions("advbench", path=path)
    assert str(path) in str(err.value)


def test_truncated_file_is_an_error(tmp_path):
    path = tmp_path / "cut.json"
    full = json.dumps([{"instruction": "a", "category": None}] * 3)
    path.write_text(full[:-5])
    with pytest.raises(InstructionDataError, match="not valid JSON"):
        read_instruction_file(path)
