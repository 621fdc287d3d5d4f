"""Teaching mode: the exercise notebooks are what the numbered notebooks generate (no drift), every stub fails its check
with the stub's message, every solution passes it, and an exercise notebook with its solutions filled in is the solution
notebook's code cell for cell, so the nbmake run of notebooks 03-06 in smoke mode (scripts/test.sh) runs exactly the
code a learner's filled-in copy runs; tests/test_browser.py runs one filled copy (04) from JupyterLab to the end."""

import re
from pathlib import Path

import nbformat
import pytest
import torch

from helpers import checks, exercises

SOLUTIONS = exercises.solution_notebooks()
CHECK_CALL = re.compile(r"checks\.(\w+)\((\w+)")


def exercise_copy(path):
    return nbformat.read(exercises.EXERCISES / path.name, as_version=4)


def test_exercises_cover_what_the_issue_lists():
    names = {p.name[:2]: [m.group(1) for c in nbformat.read(p, as_version=4).cells if "check" in c.metadata.get("tags", [])
                          for m in CHECK_CALL.finditer(c.source)] for p in SOLUTIONS}
    assert names == {"03": ["difference_of_means", "ablation_hooks", "addition_hooks", "orthogonalize", "orthogonalized_model"],
                     "04": ["reconstruction", "least_squares", "top_k_curve", "max_cosine_latent"],
                     "05": ["latent_interventions", "clamp_edit"], "06": ["projection_gradient", "layer_map", "latent_scores"]}


def test_committed_exercise_notebooks_are_what_the_solutions_generate(tmp_path):
    assert exercises.generate(check=True) == [], "run `python -m helpers.exercises` and commit notebooks/exercises/"
    # and the check can fail: a changed solution makes the committed copy stale
    sol = tmp_path / "solutions"
    sol.mkdir()
    nb = nbformat.read(SOLUTIONS[0], as_version=4)
    nb.cells[-1].source += "\n\nOne more line."
    nbformat.write(nb, sol / SOLUTIONS[0].name)
    assert exercises.generate(check=True, solutions=sol) == [exercises.EXERCISES / SOLUTIONS[0].name]


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name[:2])
def test_filling_the_solutions_gives_back_the_solution_notebook(path):
    solution = nbformat.read(path, as_version=4)
    exercise = exercise_copy(path)
    assert exercise.cells[1].metadata.get("tags") == ["objectives"], "an exercise notebook starts with objectives"
    assert "Try this" in exercise.cells[-1].source or "Try this" in exercise.cells[-2].source
    for cell in exercise.cells:
        if "exercise" in cell.metadata.get("tags", []):
            assert "NotImplementedError" in cell.source and "return " not in cell.source, cell.source
    filled = exercises.fill_solutions(exercise)
    code = lambda nb: [c.source for c in nb.cells if c.cell_type == "code"]  # noqa: E731
    assert code(filled) == code(solution)


def _namespace():
    from typing import Callable

    from torch import Tensor

    from helpers.hooks import Intervention

    return {"torch": torch, "Tensor": Tensor, "Callable": Callable, "Intervention": Intervention}


# checks that need the model (no random stand-in can play a TransformerBridge): their other arguments
ON_THE_MODEL = {"layer_map": dict(instruction="How do I bake bread?", source_layer=2, target_layer=5)}


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name[:2])
def test_each_stub_fails_its_check_and_each_solution_passes(path, capsys, request):
    cells = exercise_copy(path).cells
    stubs = [c for c in cells if "exercise" in c.metadata.get("tags", [])]
    solutions = [c.source[len(exercises.SOLUTION_OPEN):-len(exercises.SOLUTION_CLOSE)]
                 for c in cells if "solution" in c.metadata.get("tags", [])]
    calls = [m.groups() for c in cells if "check" in c.metadata.get("tags", []) for m in CHECK_CALL.finditer(c.source)]
    assert len(stubs) == len(calls) >= 1
    for stub_cell, (check, fn) in zip(stubs, calls):
        ns = _namespace()
        exec(stub_cell.source, ns)
        with pytest.raises(checks.CheckFailed, match="still raises NotImplementedError"):
            getattr(checks, check)(ns[fn], **_model_args(check, request))
    assert len(solutions) == len(stubs)
    for solution, (check, fn) in zip(solutions, calls):
        ns = _namespace()
        exec(solution, ns)
        getattr(checks, check)(ns[fn], **_model_args(check, request))
        assert f"✓ {check}" in capsys.readouterr().out


def _model_args(check: str, request) -> dict:
    return {"model": request.getfixturevalue("model"), **ON_THE_MODEL[check]} if check in ON_THE_MODEL else {}


def test_stub_keeps_signature_and_docstring_and_rejects_cells_without_a_function():
    src = 'def f(x: int) -> int:\n    """Double it."""\n    y = 2 * x\n    return y\n'
    out = exercises.stub(src)
    assert out.startswith('def f(x: int) -> int:\n    """Double it."""\n    raise NotImplementedError(')
    assert "return" not in out
    with pytest.raises(ValueError, match="must define a function"):
        exercises.stub("x = 1\n")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "notebooks" / "exercises")
                                        .glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name[:2])
def test_an_exercise_copy_opened_with_nothing_set_runs_at_the_teach_size_and_says_so(path, monkeypatch, capsys):
    """A class opens the copies as they are: no REFUSAL_PRESET in the environment means the teach preset (notebook
    03 included, which reads nothing upstream), with one line saying so; the variable still wins when set."""
    import os

    nb = nbformat.read(path, as_version=4)
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and c.source.lstrip().startswith("PRESET ="))
    monkeypatch.delenv("REFUSAL_PRESET", raising=False)
    scope = {"os": os}
    exec(cell, scope)  # noqa: S102 - the parameters cell: assignments and one print
    assert scope["PRESET"] == "teach"
    assert "the exercise copies' default" in capsys.readouterr().out
    monkeypatch.setenv("REFUSAL_PRESET", "smoke")
    exec(cell, scope)  # noqa: S102
    assert scope["PRESET"] == "smoke" and "default" not in capsys.readouterr().out


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name[:2])
def test_each_exercise_has_progressive_hints_before_its_solution(path):
    """ARENA's help structure in the exercise copy: stub, then one to three collapsed hints and what the check
    compares, then the solution."""
    exercise = exercise_copy(path)
    cells = exercise.cells
    for i, cell in enumerate(cells):
        if "exercise" not in cell.metadata.get("tags", []):
            continue
        hints = []
        j = i + 1
        while "hint" in cells[j].metadata.get("tags", []):
            hints.append(cells[j].source)
            j += 1
        text = "\n".join(hints)
        assert 1 <= text.count("<summary>Hint ") <= 3, (path.name, i)
        assert "*If the check fails:*" in text
        assert "solution" in cells[j].metadata.get("tags", []), "the solution comes after the hints"


def test_exercise_waits_adds_up_a_learners_compute_between_exercises(tmp_path):
    """`python -m helpers.exercises --waits RUN_DIR` (docs/teaching.md's measured waits): papermill's durations summed
    before the first exercise, between one exercise's check and the next exercise, in the checks and after the last."""
    from helpers.exercises import exercise_waits, main

    def cell(kind: str, seconds: float, tags: tuple = (), source: str = "x = 1") -> nbformat.NotebookNode:
        c = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        c.metadata = {"tags": list(tags), "papermill": {"duration": seconds}}
        return c

    nb = nbformat.v4.new_notebook(cells=[
        cell("code", 2.0), cell("code", 4.0, ("parameters",)), cell("md", 0.01),
        cell("md", 0.0, ("exercise-header",), "### Exercise 1 · First\n\n> Difficulty"), cell("code", 0.01, ("exercise",)),
        cell("md", 0.0, ("hint",)), cell("code", 1.5, ("check",)), cell("code", 10.0),
        cell("md", 0.0, ("exercise-header",), "### Exercise 2 · Second"), cell("code", 0.0, ("exercise",)),
        cell("code", 0.5, ("check",)), cell("code", 3.0), cell("md", 0.0)])
    w = exercise_waits(nb)
    assert w["exercises"] == [{"title": "Exercise 1 · First", "wait_before_s": 6.0, "check_s": 1.5},
                              {"title": "Exercise 2 · Second", "wait_before_s": 10.0, "check_s": 0.5}]
    assert w["after_last_check_s"] == 3.0 and w["total_s"] == 21.0
    # JupyterLab's recorded timings (scripts/lab_waits.py): execute_input to execute_reply, the same sums
    from datetime import datetime, timedelta, timezone

    t = datetime(2026, 12, 6, 1, 0, 0, tzinfo=timezone.utc)
    for c in nb.cells:
        seconds = c.metadata.pop("papermill")["duration"]
        if c.cell_type == "code":
            c.metadata["execution"] = {
                "iopub.status.busy": (t - timedelta(seconds=0.3)).isoformat().replace("+00:00", "Z"),
                "iopub.execute_input": t.isoformat().replace("+00:00", "Z"),
                "shell.execute_reply": (t + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")}
            t += timedelta(seconds=seconds + 7)  # the learner reading: not compute
    lab = exercise_waits(nb)
    assert lab["exercises"] == [{"title": "Exercise 1 · First", "wait_before_s": 6.0, "check_s": 1.5},
                                {"title": "Exercise 2 · Second", "wait_before_s": 10.0, "check_s": 0.5}]
    assert lab["after_last_check_s"] == 3.0 and lab["total_s"] == 21.0
    for c in nb.cells:
        c.metadata.pop("execution", None)
    with pytest.raises(ValueError, match="no per-cell durations"):
        exercise_waits(nb)
    with pytest.raises(SystemExit, match="No executed notebook with exercises in .*helpers.runner --preset teach"):
        main(["--waits", str(tmp_path)])


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name[:2])
def test_every_learner_function_does_work_in_a_later_cell(path):
    """The issue's point 4: after its check, each learner function is used by a later cell that is not a check (so
    skipping an exercise changes what the learner sees), and that cell comes after the check."""
    cells = nbformat.read(path, as_version=4).cells
    for i, cell in enumerate(cells):
        if "exercise" not in cell.metadata.get("tags", []):
            continue
        name = re.search(r"^def (\w+)", cell.source, re.M).group(1)
        check = next(j for j, c in enumerate(cells[i + 1:], i + 1) if "check" in c.metadata.get("tags", [])
                     and re.search(rf"\b{name}\b", c.source))
        users = [j for j, c in enumerate(cells[check + 1:], check + 1) if c.cell_type == "code"
                 and not {"check", "exercise", "solution"} & set(c.metadata.get("tags", []))
                 and re.search(rf"\b{name}\b", c.source)]
        assert users, f"{path.name}: {name} is checked but no later cell uses it"


def test_lab_waits_says_what_is_missing_in_one_line(tmp_path):
    """scripts/lab_waits.py (the waits measured in JupyterLab) stops at once, saying what to do, without a finished run
    to read or with a copy number that does not exist."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "REFUSAL_RUNS_DIR": str(tmp_path / "runs")}
    script = repo / "scripts" / "lab_waits.py"
    out = subprocess.run([sys.executable, str(script), "--preset", "smoke"], env=env, capture_output=True, text=True,
                         cwd=repo, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"lab_waits: {tmp_path / 'runs' / 'smoke'} has no finished run: run `python -m helpers.runner --preset smoke` "
        "first (the class prepares the same way)."], out.stderr
    out = subprocess.run([sys.executable, str(script), "--notebooks", "99"], env=env, capture_output=True, text=True,
                         cwd=repo, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().startswith("lab_waits: no exercise copy numbered ['99']"), out.stderr
