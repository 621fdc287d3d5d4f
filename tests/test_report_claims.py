"""Every claim of the report on synthetic results files: all hold on one set of numbers, and each one, and only
that one, fails when its own number is moved past its line."""

import copy
import json

import pytest

from helpers.report import claims


def _rate(r, n=40, half=0.1):
    return {"rate": r, "ci95": [max(0.0, r - half), min(1.0, r + half)], "n": n, "stderr": (r * (1 - r) / n) ** 0.5}


def _ci(estimate, lo, hi):
    return {"estimate": estimate, "ci95": [lo, hi]}


def _control(*names, lo=0.05, hi=0.3):
    return {"pair": ["chat", "webtext_chat"], "directions": {
        "r": {"edge_r_minus_edge": _ci(0.0, 0.0, 0.0)},
        **{n: {"edge_r_minus_edge": _ci((lo + hi) / 2, lo, hi)} for n in names}}}


SEEDS = {"summary": {  # runs/<preset>/seed_variance.json (scripts/seed_variance.py)
    "AdvBench vs Alpaca (Kissane et al.'s split) · no system turn (paper) · chat":
        {"cosine": [0.70, 0.69, 0.68], "max_decoder_cosine": [0.54, 0.5, 0.49], "seeds": [0, 1, 2]},
    "AdvBench vs Alpaca (Kissane et al.'s split) · no system turn (paper) · webtext_chat":
        {"cosine": [0.44, 0.42, 0.41], "max_decoder_cosine": [0.15, 0.14, 0.14], "seeds": [0, 1, 2]}}}

HOLDING = {
    "refusal_direction": {
        "refusal_rate": {"harmful · none": _rate(0.6), "harmful · ablation": _rate(0.05, half=0.05),
                         "harmless · actadd": _rate(0.7)},
        "orthogonalization_relative_difference": 5e-7,
        "public_refusal_rate": {"harmful · harmful_val · none": _rate(0.5), "harmful · harmful_val · ablation":
                                _rate(0.0, half=0.05), "harmless · harmless_val · none": _rate(0.02),
                                "harmless · harmless_val · actadd": _rate(0.6)}},
    "decompose_refusal_direction": {
        "headline": "pos -1",
        "faithfulness": {"pos -1": {"n_harmful": 64, "n_harmless": 64, "saes": {
            "chat": {"cosine": _ci(0.4, 0.3, 0.5)}, "webtext_chat": {"cosine": _ci(0.2, 0.1, 0.3)}},
            "differences": {"chat - webtext_chat": {"cosine": _ci(0.2, 0.1, 0.3)}}}},
        "max_decoder_cosine": {"chat": {"cosine": 0.3, "latent": 1}, "webtext_chat": {"cosine": 0.2, "latent": 2}},
        "paper_protocol": "Kissane · no system turn",
        "protocols": {"Kissane · no system turn": {
            "faithfulness": {"n_harmful": 64, "n_harmless": 64, "saes": {
                "chat": {"cosine": _ci(0.73, 0.6, 0.8)}, "webtext_chat": {"cosine": _ci(0.54, 0.4, 0.6)}},
                "differences": {"chat - webtext_chat": {"cosine": _ci(0.19, 0.1, 0.3)}}},
            "max_decoder_cosine": {"chat": {"cosine": 0.51, "latent": 1}, "webtext_chat": {"cosine": 0.16, "latent": 2}},
            "smallest_k": {n: {"k for rel. MSE ≤ 0.5 (top Δ, least squares)": k,
                               "k for rel. MSE ≤ 0.5 (Kissane et al.'s |Δf|·‖d‖, Adam)": k}
                           for n, k in (("chat", 128), ("webtext_chat", 512))},
            "style_control": _control("harmless style (question − imperative)")}},
        "structured_control": _control("harmless categories", "harmful categories"),
        "smallest_k": {"chat": {"k for rel. MSE ≤ 0.5 (top Δ)": 64}, "webtext_chat": {"k for rel. MSE ≤ 0.5 (top Δ)": 256}}},
    "steering": {
        "saes": {"chat": {}, "webtext_chat": {}}, "matching_k": {"chat (delta)": 1, "webtext_chat (delta)": 4},
        "bypass": {"ablate r": {"substring": _rate(0.05)}, "ablate chat top latent": {"substring": _rate(0.075)},
                   "ablate webtext_chat top latent": {"substring": _rate(0.5)},
                   "ablate chat top latent (Kissane et al.'s protocol: 1)": {"substring": _rate(0.06)},
                   "ablate webtext_chat top latent (Kissane et al.'s protocol: 2)": {"substring": _rate(0.5)}}},
    "refusal_gradient": {"chat_vs_webtext": {"chat": {
        "top positive": {"mean": 0.6, "se": 0.05, "n": 27}, "top negative": {"mean": -0.4, "se": 0.05, "n": 27},
        "random": {"mean": 0.0, "se": 0.03, "n": 27}}},
        "specificity": {
            "chat · no system turn · instruction tokens": {
                "k": 10, "n_requests": 13, "n_wordings": 39, "within": _ci(0.6, 0.5, 0.7), "between": _ci(0.2, 0.1, 0.3),
                "difference": _ci(0.4, 0.3, 0.5)},
            "chat · no system turn · every position": {  # not a claim row: only instruction tokens are judged
                "k": 10, "n_requests": 13, "n_wordings": 39, "within": _ci(0.9, 0.8, 1.0), "between": _ci(0.9, 0.8, 1.0),
                "difference": _ci(0.0, -0.1, 0.1)}}},
    "seed_variance": SEEDS,
}

# claim (start of its text) -> how to move its own number past its line
BREAKS = {
    "ablating r removes refusal": lambda d: d["refusal_direction"]["refusal_rate"].update(
        {"harmful · ablation": _rate(0.3)}),
    "adding r induces refusal on harmless": lambda d: d["refusal_direction"]["refusal_rate"].update(
        {"harmless · actadd": _rate(0.3)}),
    "weight orthogonalization": lambda d: d["refusal_direction"].update(
        {"orthogonalization_relative_difference": 1e-2}),
    "the same, public split harmful_val": lambda d: d["refusal_direction"]["public_refusal_rate"].update(
        {"harmful · harmful_val · ablation": _rate(0.4)}),
    "adding r induces refusal, public split harmless_val": lambda d: d["refusal_direction"]["public_refusal_rate"]
    .update({"harmless · harmless_val · actadd": _rate(0.2)}),
    "the chat SAE reconstructs r more faithfully than the webtext_chat SAE (cosine; their prompts": lambda d:
    d["decompose_refusal_direction"]["protocols"]["Kissane · no system turn"]["faithfulness"]["differences"].update(
        {"chat - webtext_chat": {"cosine": _ci(0.05, -0.05, 0.15)}}),
    "the chat SAE's best latent is closer to r (max decoder cosine; their prompts": lambda d:
    d["decompose_refusal_direction"]["protocols"]["Kissane · no system turn"]["max_decoder_cosine"]["chat"].update(
        {"cosine": 0.1}),
    "the chat SAE reconstructs r more faithfully than the webtext_chat SAE (cosine; our sets": lambda d: d["decompose_refusal_direction"]["faithfulness"]["pos -1"]
    ["differences"].update({"chat - webtext_chat": {"cosine": _ci(0.1, -0.02, 0.2)}}),
    "the chat SAE's best latent is closer to r (max decoder cosine; our sets": lambda d:
    d["decompose_refusal_direction"]["max_decoder_cosine"]["chat"]
    .update({"cosine": 0.1}),
    "the chat SAE reconstructs r more sparsely (k for relative MSE ≤ 0.5, top-Δ latents by least squares; our": lambda d: d["decompose_refusal_direction"]["smallest_k"]["chat"]
    .update({"k for rel. MSE ≤ 0.5 (top Δ)": 512}),
    "ablating the chat SAE's top latent bypasses refusal about as well as r (latent from their prompts)": lambda d:
    d["steering"]["bypass"].update({"ablate chat top latent (Kissane et al.'s protocol: 1)": {"substring": _rate(0.3)}}),
    "the Pile (webtext_chat) SAE's top latent bypasses less than the chat SAE's (latent from their prompts)": lambda d:
    d["steering"]["bypass"].update(
        {"ablate webtext_chat top latent (Kissane et al.'s protocol: 2)": {"substring": _rate(0.1)}}),
    "ablating the chat SAE's top latent bypasses refusal about as well as r (latent from our sets)": lambda d:
    d["steering"]["bypass"].update({"ablate chat top latent": {"substring": _rate(0.4)}}),
    "the Pile (webtext_chat) SAE's top latent bypasses less than the chat SAE's (latent from our sets)": lambda d:
    d["steering"]["bypass"].update({"ablate webtext_chat top latent": {"substring": _rate(0.1)}}),
    "adding top gradient latents": lambda d: d["refusal_gradient"]["chat_vs_webtext"]["chat"].update(
        {"top negative": {"mean": -0.02, "se": 0.05, "n": 27}}),
    "the top latents are prompt-specific": lambda d: d["refusal_gradient"]["specificity"][
        "chat · no system turn · instruction tokens"].update({"difference": _ci(0.1, -0.05, 0.25)}),
    "the chat SAE reconstructs r more sparsely (k for relative MSE ≤ 0.5, top-Δ latents by least squares; their":
    lambda d: d["decompose_refusal_direction"]["protocols"]["Kissane · no system turn"]["smallest_k"]["chat"].update(
        {"k for rel. MSE ≤ 0.5 (top Δ, least squares)": 512}),
    "the chat SAE's edge over the webtext_chat SAE is about refusal (edge on r minus edge on a direction of r's kind "
    "without refusal; their prompts": lambda d: d["decompose_refusal_direction"]["protocols"][
        "Kissane · no system turn"].update({"style_control": _control("harmless style (question − imperative)",
                                                                      lo=-0.3, hi=-0.05)}),
    "the chat SAE's edge over the webtext_chat SAE is about refusal (edge on r minus edge on a direction of r's kind "
    "without refusal; our sets": lambda d: d["decompose_refusal_direction"].update(
        {"structured_control": _control("harmless categories", "harmful categories", lo=-0.3, hi=-0.01)}),
    "the chat SAE reconstructs r more faithfully, over SAE training seeds": lambda d: d["seed_variance"][
        "summary"]["AdvBench vs Alpaca (Kissane et al.'s split) · no system turn (paper) · webtext_chat"].update(
        {"cosine": [0.44, 0.42, 0.69]}),
}
# a claim with two sides: each side alone must break it
OTHER_SIDES = {
    "adding top gradient latents": lambda d: d["refusal_gradient"]["chat_vs_webtext"]["chat"].update(
        {"top positive": {"mean": 0.03, "se": 0.05, "n": 27}}),
    "the top latents are prompt-specific": lambda d: d["refusal_gradient"]["specificity"][
        "chat · no system turn · instruction tokens"].update({"between": _ci(0.35, 0.25, 0.45)}),
}


def _write(tmp_path, data):
    for folder, results in data.items():
        if folder == "seed_variance":
            (tmp_path / "seed_variance.json").write_text(json.dumps(results))
            continue
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "results.json").write_text(json.dumps(results))
    return {r["claim"]: r["held"] for r in claims(tmp_path)}


def _find(held, start):
    found = [c for c in held if c.startswith(start)]
    assert len(found) == 1, (start, list(held))
    return found[0]


def test_every_claim_holds_on_the_holding_numbers(tmp_path):
    held = _write(tmp_path, HOLDING)
    judged = {c: h for c, h in held.items() if h is not None}
    assert judged and all(judged.values()), judged
    assert {_find(held, s) for s in BREAKS} == set(judged), "every judged claim has a case that breaks it"


@pytest.mark.parametrize("start, move", [*BREAKS.items(), *OTHER_SIDES.items()],
                         ids=[*BREAKS, *(f"{s} (other side)" for s in OTHER_SIDES)])
def test_each_claim_fails_alone_when_its_number_crosses_its_line(tmp_path, start, move):
    """Each claim's own number (either side of a two-sided claim) moved past its line breaks that claim only."""
    data = copy.deepcopy(HOLDING)
    move(data)
    held = _write(tmp_path, data)
    claim = _find(held, start)
    assert held[claim] is False, claim
    others = {c: h for c, h in held.items() if c != claim and h is not None}
    assert all(others.values()), f"breaking {claim!r} also broke {[c for c, h in others.items() if not h]}"


def test_a_control_whose_intervals_contain_zero_is_undecided(tmp_path):
    data = copy.deepcopy(HOLDING)
    data["decompose_refusal_direction"]["structured_control"] = _control("harmless categories", lo=-0.1, hi=0.2)
    held = _write(tmp_path, data)
    claim = _find(held, "the chat SAE's edge over the webtext_chat SAE is about refusal (edge on r minus edge on a "
                        "direction of r's kind without refusal; our sets")
    assert held[claim] is None
    rows = [r for r in claims(tmp_path) if r["claim"] == claim]
    assert rows[0]["this run"].endswith(": undecided")


def test_without_the_seed_file_there_is_no_seed_row(tmp_path):
    data = {k: v for k, v in copy.deepcopy(HOLDING).items() if k != "seed_variance"}
    assert not any(c.startswith("the chat SAE reconstructs r more faithfully, over SAE training seeds")
                   for c in _write(tmp_path, data))
