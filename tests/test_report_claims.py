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
            "max_decoder_cosine": {"chat": {"cosine": 0.51, "latent": 1}, "webtext_chat": {"cosine": 0.16, "latent": 2}}}},
        "smallest_k": {"chat": {"k for rel. MSE ≤ 0.5 (top Δ)": 64}, "webtext_chat": {"k for rel. MSE ≤ 0.5 (top Δ)": 256}}},
    "steering": {
        "saes": {"chat": {}, "webtext_chat": {}}, "matching_k": {"chat (delta)": 1, "webtext_chat (delta)": 4},
        "bypass": {"ablate r": {"substring": _rate(0.05)}, "ablate chat top latent": {"substring": _rate(0.075)},
                   "ablate webtext_chat top latent": {"substring": _rate(0.5)},
                   "ablate chat top latent (Kissane et al.'s protocol: 1)": {"substring": _rate(0.06)},
                   "ablate webtext_chat top latent (Kissane et al.'s protocol: 2)": {"substring": _rate(0.5)}}},
    "refusal_gradient": {"chat_vs_webtext": {"chat": {
        "top positive": {"mean": 0.6, "se": 0.05, "n": 27}, "top negative": {"mean": -0.4, "se": 0.05, "n": 27},
        "random": {"mean": 0.0, "se": 0.03, "n": 27}}}},
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
    "the chat SAE reconstructs r more sparsely": lambda d: d["decompose_refusal_direction"]["smallest_k"]["chat"]
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
}


def _write(tmp_path, data):
    for folder, results in data.items():
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


@pytest.mark.parametrize("start", list(BREAKS))
def test_each_claim_fails_alone_when_its_number_crosses_its_line(tmp_path, start):
    data = copy.deepcopy(HOLDING)
    BREAKS[start](data)
    held = _write(tmp_path, data)
    claim = _find(held, start)
    assert held[claim] is False, claim
    others = {c: h for c, h in held.items() if c != claim and h is not None}
    assert all(others.values()), f"breaking {claim!r} also broke {[c for c, h in others.items() if not h]}"
