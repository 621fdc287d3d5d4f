"""The path a Colab or pip user takes: a non-editable install, used from outside the repository."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_non_editable_install_ships_instruction_sets_and_roots_runs_in_the_working_directory(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(REPO)], check=True, capture_output=True, timeout=300)
    assert (target / "helpers" / "data" / "instructions" / "harmful.json").exists()
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("import helpers.instructions as i, helpers.config as c; "
            "assert 'site' in i.__file__, i.__file__; "
            "print(len(i.load_instructions('harmful')), len(i.load_instructions('harmless', split='val', n=10)), "
            "len(i.case_studies()), c.get_config('smoke').run_dir)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("REFUSAL_RUNS_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    n_harmful, n_val, n_cases, run_dir = out.stdout.split()
    assert (int(n_harmful), int(n_val), int(n_cases)) == (200, 10, 3)
    assert Path(run_dir) == work / "runs" / "smoke", "outputs go to the working directory, not site-packages"


# import name -> distribution name, where they differ
DIST = {"IPython": "ipython", "yaml": "pyyaml", "sae_lens": "sae-lens", "transformer_lens": "transformer-lens",
        "huggingface_hub": "huggingface-hub"}


def _imports(source: str) -> set[str]:
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_every_third_party_import_is_declared():
    """Each package imported in helpers/, scripts/ and the notebooks is a declared dependency (wandb: the paper
    extra), so `pip install ".[offline]"` has what the main job imports (found missing once: wandb; ipykernel, which
    papermill needs to run a notebook, came only with the dev extra)."""
    import json
    import re
    import sys
    import tomllib

    repo = Path(__file__).resolve().parents[1]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}

    core, extras = names(project["dependencies"]), {k: names(v) for k, v in project["optional-dependencies"].items()}
    local = {p.stem for d in ("helpers", "scripts", "tests", "tests/browser") for p in (repo / d).glob("*.py")} | {"helpers"}
    found: dict[str, set[str]] = {}
    for path in [*repo.glob("helpers/*.py"), *repo.glob("scripts/*.py")]:
        for name in _imports(path.read_text()):
            found.setdefault(name, set()).add(str(path.relative_to(repo)))
    for path in repo.glob("notebooks/**/*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                code = "\n".join(l for l in "".join(cell["source"]).splitlines() if not l.lstrip().startswith(("%", "!")))
                for name in _imports(code):
                    found.setdefault(name, set()).add(str(path.relative_to(repo)))
    missing = []
    for name, where in sorted(found.items()):
        if name in sys.stdlib_module_names or name in local:
            continue
        dist = DIST.get(name, name).lower().replace("_", "-")
        if dist == "wandb":
            ok = dist in extras.get("paper", set())
        elif any(w.startswith("scripts/") for w in where) and not any(w.startswith(("helpers/", "notebooks/"))
                                                                     for w in where):
            ok = dist in core or any(dist in e for e in extras.values())
        else:
            ok = dist in core
        if not ok:
            missing.append(f"{name} ({dist}) imported in {sorted(where)[:2]}")
    assert not missing, missing
    assert "ipykernel" in core, "papermill needs a kernel to run the main job"
