"""Prose that drifts from the code: numbers, layers and corpus lists in the notebooks must match the presets, and a
"Try this" must change something. (Found by hand once: a Try-this setting the offline default, comments naming the
offline pair as plain webtext + chat after it became webtext_chat + chat, a layer number in prose after the selected
layer moved.)"""

import ast
import re
from pathlib import Path

import nbformat
import pytest

from helpers.config import CORPUS_NAMES, PRESETS, get_config

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CALL = re.compile(r"(?:setup\(PRESET[^)]*?|get_config\(\s*\"(\w+)\"[^)]*?),\s*(\w+)=([^,)]+)\)")


def _cells(kind: str):
    for nb_path in NOTEBOOKS:
        for cell in nbformat.read(nb_path, as_version=4).cells:
            if cell.cell_type == kind:
                yield nb_path.name, cell.source


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_try_this_overrides_change_the_preset(nb_path):
    """`setup(PRESET, ..., field=value)` / `get_config("preset", field=value)` in a Try-this must set a value the
    preset does not already have (the offline preset where the call names none)."""
    for cell in nbformat.read(nb_path, as_version=4).cells:
        if cell.cell_type != "markdown" or "Try this" not in cell.source:
            continue
        for preset, field, value in CALL.findall(cell.source):
            try:
                value = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                continue  # an expression (replace(...), a variable): not a constant to compare
            cfg = get_config(preset or "offline")
            if hasattr(cfg, field):
                assert getattr(cfg, field) != value, f"{nb_path.name}: Try-this sets {field}={value!r}, already the default"


def test_corpus_lists_in_comments_name_each_presets_corpora():
    """A comment like `(offline: webtext_chat, chat; paper: ...)` lists each preset's `sae_corpora`."""
    pattern = re.compile(r"\b(offline|paper|smoke): ((?:\w+(?:, )?)+)")
    checked = 0
    for name, source in _cells("code"):
        for line in source.splitlines():
            if "#" not in line:
                continue
            for preset, listed in pattern.findall(line.split("#", 1)[1]):
                items = [x.strip() for x in listed.split(",") if x.strip()]
                if items and all(x in CORPUS_NAMES for x in items):
                    assert set(items) == set(PRESETS[preset].sae_corpora), \
                        f"{name}: comment lists {items} for {preset}, the preset has {PRESETS[preset].sae_corpora}"
                    checked += 1
    assert checked >= 2, "the parameters cells of notebooks 01 and 02 name the presets' corpora"


def test_no_hard_coded_layer_numbers_in_prose():
    """Layers in prose come from results or config: only the SAE hook's layer (the same in every preset) may be
    written as a number; the selected direction's layer moves between runs."""
    hook_layers = {int(cfg.sae_hook.split(".")[1]) for cfg in PRESETS.values()}
    for name, source in _cells("markdown"):
        for m in re.finditer(r"\b[Ll]ayers? (\d+)\b", source):
            assert int(m.group(1)) in hook_layers, f"{name}: prose names layer {m.group(1)}: {source[m.start() - 60:m.end()]!r}"


ROOT = Path(__file__).resolve().parents[1]


def _parameters(notebook: str) -> dict:
    """The constants of a notebook's parameters cell (the one that sets PRESET)."""
    nb = nbformat.read(ROOT / "notebooks" / notebook, as_version=4)
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and c.source.lstrip().startswith("PRESET ="))
    values = {}
    for node in ast.parse(cell).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


def _method(page: str) -> str:
    """A docs page's method paragraphs: the text before its first run (a bold "**...run" header)."""
    text = (ROOT / "docs" / page).read_text()
    return " ".join(text[: text.index("**")].split())


def test_notebook_06s_reading_and_target_rule_are_the_ones_its_docs_and_docstring_describe():
    """Found by hand once: docs/06 opened with the most separating target layer and the r-orthogonal reading as
    the main ones, and gradients.py called that reading "our choice", after the notebook moved to the post's plain
    gradient and notebook 03's layer."""
    import helpers.gradients as grads

    p = _parameters("06_refusal_gradient.ipynb")
    method, doc = _method("06_refusal_gradient.md"), " ".join(grads.__doc__.split())
    wrong_main = re.compile(r"main reading (?:removes|is the r[- ]orthogonal)|r_orthogonal[^.]*: our choice", re.S)
    if p["R_ORTHOGONAL"] is False:
        assert "main reading is the post's plain gradient" in method
        for where, text in (("docs/06", method), ("helpers/gradients.py", doc)):
            assert not wrong_main.search(text), f"{where} names the r-orthogonal reading as the main one"
    if p["TARGET_LAYER"] is None:
        assert "notebook 03's selected layer" in method and "notebook 03's selected layer" in doc
        assert not re.search(r"L is the layer ≥ source \+ 3 where R best separates", method), \
            "docs/06 gives the most separating layer as the target rule"


def test_the_random_halves_null_is_not_described_as_telling_refusal_from_chat_format():
    """Both random halves carry the chat format, so that control cannot separate refusal from it (found by hand in
    helpers/decomposition.py and docs/04)."""
    import helpers.decomposition as dec

    claim = re.compile(r"separates? \W?refusal\W? from \W?chat format|about refusal rather than chat format", re.I)
    texts = {"helpers/decomposition.py": dec.__doc__, "docs/04": (ROOT / "docs" / "04_decompose_refusal_direction.md")
             .read_text()}
    texts |= {name: source for name, source in _cells("markdown") if name.startswith("04")}
    for where, text in texts.items():
        assert not claim.search(text), f"{where}: {claim.search(text).group(0)!r}"
