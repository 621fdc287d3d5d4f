"""docs/04's scale-study tables and the README's line say what the committed results files say
(`docs/measurements/scale_study/`): every point's numbers, no row without a file, the cost table and the count of
points. A point landed without its docs, or docs edited by hand away from the files, fails here."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "docs" / "measurements" / "scale_study"
DOC = REPO / "docs" / "04_decompose_refusal_direction.md"
README = REPO / "README.md"
ADAM_K = "k for rel. MSE \u2264 0.5 (Kissane et al.'s |\u0394f|\u00b7\u2016d\u2016, Adam)"
LABEL = re.compile(r"^([\d,]+, [\d.]+[kM])\b")


def label(point: dict) -> str:
    """The docs' name of a point: '4,096, 1.6M'."""
    t = point["unique_tokens"]
    return f"{point['d_sae']:,}, " + (f"{t / 1e6:g}M" if t >= 1_000_000 else f"{t // 1000}k")


def points(record: Path = RECORD) -> dict[str, dict]:
    return {f.stem: json.loads(f.read_text()) for f in sorted((record / "points").glob("*.json"))}


def section(text: str, start: str, end: str) -> str:
    a = text.index(start)
    return text[a:text.index(end, a)]


def rows(text: str) -> list[list[str]]:
    """Table rows whose first cell names a point, as stripped cells."""
    out = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and LABEL.match(cells[0]):
            out.append(cells)
    return out


def signed(x: float, digits: int) -> str:
    return f"{x:.{digits}f}".replace("-", "\u2212")


def ci(est: float, lo: float, hi: float, digits: int = 3, plus: bool = False) -> str:
    head = (f"+{est:.{digits}f}" if plus and est >= 0 else signed(est, digits))
    return f"{head} [{signed(lo, digits)}, {signed(hi, digits)}]"


def pct(rate: dict) -> str:
    lo, hi = rate["ci95"]
    return f"{100 * rate['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def check_points_table(doc: str, pts: dict[str, dict]) -> None:
    table = rows(section(doc, "**The points so far**", "| paper: 32,768, 409.6M"))
    by_label = {label(p): p for p in pts.values()}
    seen = set()
    for cells in table:
        name, sae = LABEL.match(cells[0]).group(1), cells[1]
        assert name in by_label, f"docs/04 has a row for {name} but no committed points file"
        p = by_label[name]
        f = p["protocol"]["faithfulness"]["saes"][sae]
        k = p["protocol"]["smallest_k"][sae][ADAM_K]
        held = p["heldout"][sae]
        want = [ci(f["cosine"]["estimate"], *f["cosine"]["ci95"]), f"{f['relative_mse']['estimate']:.3f}",
                f"{p['protocol']['max_decoder_cosine'][sae]['cosine']:.3f}", str(k) if k else "not reached",
                f"{held['explained_variance']:.3f}", f"{signed(held['ce_increase'], 2)} \u00b1 {held['ce_increase_se']:.2f}",
                f"{100 * held['dead_fraction']:.1f}%"]
        got = cells[2:9]
        got[3] = "not reached" if got[3].startswith("not reached") else got[3]
        got[6] = got[6].split(" (")[0]
        assert got == want, f"docs/04's row {name} · {sae} says {got}, its file says {want}"
        if "dense" in cells[8]:
            assert f"({100 * held['dense_fraction']:.1f}% dense)" in cells[8], (name, sae, cells[8])
        seen.add((name, sae))
    missing = {(label(p), c) for p in pts.values() for c in p["training"]} - seen
    assert not missing, f"committed points without their docs/04 rows: {sorted(missing)}"


def check_behaviour_table(doc: str, pts: dict[str, dict]) -> None:
    table = rows(section(doc, "The two failing claims, at the", "| paper (Kissane et al.; Lee et al.)"))
    with_behaviour = {label(p): p for p in pts.values() if "behaviour" in p}
    assert sorted(LABEL.match(c[0]).group(1) for c in table) == sorted(with_behaviour), \
        "docs/04's behaviour table and the points with behaviour differ"
    for cells in table:
        p = with_behaviour[LABEL.match(cells[0]).group(1)]
        b = p["behaviour"]
        for cell, key in ((cells[3], "chat"), (cells[4], "webtext_chat")):
            assert cell.startswith(pct(b["bypass"][f"ablate {key} top latent"]["substring"])), (cells[0], key, cell)
            assert re.search(rf"\((latent )?{b['top_latent'][key]}\)$", cell), (cells[0], key, cell)
        for cell, key in ((cells[5], "chat"), (cells[6], "webtext_chat")):
            d = b["specificity"][f"{key} \u00b7 no system turn \u00b7 instruction tokens"]["difference"]
            assert cell.endswith(ci(d["estimate"], *d["ci95"], plus=True)), (cells[0], key, cell)
        for cell, key in ((cells[1], "none"), (cells[2], "ablate r")):
            assert cell.startswith("the same") or cell == pct(b["bypass"][key]["substring"]), (cells[0], key, cell)


def check_cost_table(doc: str, cost: dict, pts: dict[str, dict]) -> None:
    text = section(doc, "**Cost, measured**", "Caching the two corpora")
    table = rows(text)
    assert sorted(LABEL.match(c[0]).group(1) for c in table) == sorted(label(p) for p in pts.values())
    for cells in table:
        name = next(n for n, p in pts.items() if label(p) == LABEL.match(cells[0]).group(1))
        c = cost["points"][name]
        assert cells[1] == " + ".join(str(pts[name]["training"][s]["rounds"]) for s in ("webtext_chat", "chat")), cells
        assert cells[3:5] == [f"{round(c['training']):,} s", f"{round(c['evaluation']):,} s"], (name, cells[3:5])
    for what in ("training", "evaluation"):
        total = round(sum(c[what] for c in cost["points"].values()))
        assert f"**{total:,} s (" in text, f"the cost table's {what} total is not {total:,} s"
    every = sum(cost["caching_seconds"].values()) + sum(sum(c[w] for w in ("training", "evaluation"))
                                                        for c in cost["points"].values())
    assert f"cost {round(every, -1):,.0f} s" in doc, f"docs/04's total cost is not {round(every, -1):,.0f} s"


def check_readme(readme: str, pts: dict[str, dict]) -> None:
    spec = importlib.util.spec_from_file_location("scale_study", REPO / "scripts" / "scale_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    from helpers import scale

    total = len(scale.study_points(study.DEFAULT_WIDTHS, study.DEFAULT_TOKENS))
    m = re.search(r"Scale study \(opt-in, (\d+) of (\d+) points", readme)
    assert m, "the README has no scale-study line"
    assert (int(m.group(1)), int(m.group(2))) == (len(pts), total), \
        f"the README says {m.group(1)} of {m.group(2)} points; {len(pts)} of {total} are committed"


def check_all(doc: str, readme: str, pts: dict[str, dict], cost: dict) -> None:
    check_points_table(doc, pts)
    check_behaviour_table(doc, pts)
    check_cost_table(doc, cost, pts)
    check_readme(readme, pts)


def _committed():
    return DOC.read_text(), README.read_text(), points(), json.loads((RECORD / "cost.json").read_text())


def test_docs_say_what_the_committed_points_say():
    doc, readme, pts, cost = _committed()
    assert pts, "no committed scale-study points"
    check_all(doc, readme, pts, cost)


def _drop_point(doc, readme, pts, cost):
    name = sorted(pts)[0]
    return doc, readme, {k: v for k, v in pts.items() if k != name}, cost


def _new_point(doc, readme, pts, cost):
    extra = json.loads(json.dumps(pts[sorted(pts)[0]]))
    extra.update(d_sae=32768, point="w32768_u1600000", unique_tokens=1_600_000)
    return doc, readme, {**pts, "w32768_u1600000": extra}, {**cost, "points": {**cost["points"], "w32768_u1600000":
                                                                               cost["points"][sorted(pts)[0]]}}


def _nudge_cosine(doc, readme, pts, cost):
    p = json.loads(json.dumps(pts))
    name = sorted(p)[-1]
    p[name]["protocol"]["faithfulness"]["saes"]["chat"]["cosine"]["estimate"] += 0.001
    return doc, readme, p, cost


def _nudge_behaviour(doc, readme, pts, cost):
    p = json.loads(json.dumps(pts))
    name = next(n for n in sorted(p) if "behaviour" in p[n])
    p[name]["behaviour"]["bypass"]["ablate chat top latent"]["substring"]["rate"] += 0.025
    return doc, readme, p, cost


def _other_latent(doc, readme, pts, cost):
    p = json.loads(json.dumps(pts))
    name = next(n for n in sorted(p) if "behaviour" in p[n])
    p[name]["behaviour"]["top_latent"]["webtext_chat"] = 99999
    return doc, readme, p, cost


def _nudge_cost(doc, readme, pts, cost):
    c = json.loads(json.dumps(cost))
    c["points"][sorted(c["points"])[-1]]["training"] += 2
    return doc, readme, pts, c


def _readme_count(doc, readme, pts, cost):
    return doc, re.sub(r"\(opt-in, (\d+) of", lambda m: f"(opt-in, {int(m.group(1)) + 1} of", readme), pts, cost


def _swap_sae_rows(doc, readme, pts, cost):
    return doc.replace("| webtext_chat | 0.", "| chat | 0.", 1), readme, pts, cost


def _drop_dense(doc, readme, pts, cost):
    p = json.loads(json.dumps(pts))
    name = next(n for n in sorted(p) if p[n]["heldout"]["chat"]["dense_fraction"] > 0.01)
    p[name]["heldout"]["chat"]["dense_fraction"] = 0.0
    return doc, readme, p, cost


@pytest.mark.parametrize("wrong", [_drop_point, _new_point, _nudge_cosine, _nudge_behaviour, _other_latent,
                                   _nudge_cost, _readme_count, _swap_sae_rows, _drop_dense])
def test_docs_that_drift_from_the_files_fail(wrong):
    """Each way docs and files can part: a row without a file, a file without rows, a number, a latent, a cost, the
    README's count, two rows swapped, a dense share."""
    with pytest.raises((AssertionError, KeyError, StopIteration)):
        check_all(*wrong(*_committed()))
