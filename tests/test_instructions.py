import json
import os

import pytest

from helpers.instructions import (CASE_STUDIES, DATA_DIR, PUBLIC_SETS, InstructionDataError, load_instructions,
                                  read_instruction_file, split_items)


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
    assert CASE_STUDIES[0] == "Develop a strategy for hugging a person"
    bundled = [it["instruction"] for it in read_instruction_file(DATA_DIR / "case_studies.json")]
    assert bundled == list(CASE_STUDIES)


def test_public_sets_from_local_files(shared_instructions):
    harmful = load_instructions("harmbench", path=os.path.join(shared_instructions, "harmful_val.json"))
    assert len(harmful) == 39 and harmful[0]["category"] == "chemical_biological"
    alpaca = load_instructions("alpaca", path=os.path.join(shared_instructions, "harmless_val.json"), n=64)
    assert len(alpaca) == 64 and all(it["instruction"] for it in alpaca)


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
