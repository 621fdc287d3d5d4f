"""One self-contained page for a run: `runs/<preset>/report.html`, built only from the files the notebooks wrote.

`python -m helpers.report --preset offline` rebuilds it in seconds without running anything. A notebook
that has not run shows "not run". The page needs no network: plotly's JavaScript is included once.
"""

from __future__ import annotations

import argparse
import html
import json
import time
from pathlib import Path

import plotly.graph_objects as go

from helpers.config import MECHANICS_ONLY_PRESETS, PRESETS, get_config, paper_pair
from helpers.files import atomic_write_text

SECTIONS = [  # (notebook file, results folder, title)
    ("00_meet_the_model.ipynb", "00_meet_the_model", "00 · Meet the model"),
    ("01_cache_activations.ipynb", "cache_activations", "01 · Activation caches"),
    ("02_train_saes.ipynb", "train_saes", "02 · Webtext and chat SAEs"),
    ("03_refusal_direction.ipynb", "refusal_direction", "03 · The refusal direction (Arditi et al.)"),
    ("04_decompose_refusal_direction.ipynb", "decompose_refusal_direction",
     "04 · The refusal direction in SAE latents (Kissane et al.)"),
    ("05_steering.ipynb", "steering", "05 · Steering with SAE latents (Kissane et al.)"),
    ("06_refusal_gradient.ipynb", "refusal_gradient", "06 · Features upstream of refusal (Lee, Breck & Arditi)"),
]


def _load(run_dir: Path, folder: str, name: str = "results.json") -> dict | None:
    path = run_dir / folder / name
    return json.loads(path.read_text()) if path.exists() else None


def _rate(d: dict) -> str:
    lo, hi = d.get("ci95", [float("nan")] * 2)
    return f"{d['rate']:.1%} [{lo:.1%}, {hi:.1%}] (n={d['n']})"


def _ci(d: dict) -> str:
    return f"{d['estimate']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p><i>nothing to show</i></p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    # timings (a column named "... seconds") are marked: they measure the machine, not the result
    cells = ["<td class='timing'>" if str(c).endswith("seconds") else "<td>" for c in cols]
    body = "".join("<tr>" + "".join(f"{td}{html.escape(_fmt(r.get(c)))}</td>" for c, td in zip(cols, cells)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def _figure(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, default_height=380)


def claims(run_dir: Path) -> list[dict]:
    """Each claim of the papers, the paper's number, this run's number with its interval and n, and whether
    it held here (None: not run)."""
    rows = []
    rd = _load(run_dir, "refusal_direction")
    if rd:
        rates = rd["refusal_rate"]
        base, abl = rates["harmful · none"], rates["harmful · ablation"]
        add = rates["harmless · actadd"]
        rows += [
            {"paper": "Arditi et al. 2024", "claim": "ablating r removes refusal on harmful prompts",
             "paper's number": "refusal score ~0.9 → ~0.05 (Qwen chat)", "this run": f"{_rate(base)} → {_rate(abl)}",
             "held": _ablation_held(base, abl)},
            {"paper": "Arditi et al. 2024", "claim": "adding r induces refusal on harmless prompts",
             "paper's number": "most harmless prompts refused", "this run": _rate(add), "held": _induce_held(add)},
            {"paper": "Arditi et al. 2024", "claim": "weight orthogonalization equals ablation",
             "paper's number": "equivalent", "this run": f"relative logit difference "
                                                         f"{rd['orthogonalization_relative_difference']:.1e}",
             "held": rd["orthogonalization_relative_difference"] <= 1e-4},
        ]
        pub = rd.get("public_refusal_rate") or {}  # the same on Arditi et al.'s public splits, where present
        for split in dict.fromkeys(k.rsplit(" · ", 1)[0] for k in pub):
            side, stem = split.split(" · ")
            if side == "harmful":
                b, a = pub[f"{split} · none"], pub[f"{split} · ablation"]
                rows.append({"paper": "Arditi et al. 2024", "claim": f"the same, public split {stem}",
                             "paper's number": "refusal score ~0.9 → ~0.05 (JailbreakBench)",
                             "this run": f"{_rate(b)} → {_rate(a)}",
                             "held": _ablation_held(b, a)})
            else:
                a = pub[f"{split} · actadd"]
                rows.append({"paper": "Arditi et al. 2024", "claim": f"adding r induces refusal, public split {stem}",
                             "paper's number": "most harmless prompts refused (Alpaca)",
                             "this run": f"{_rate(pub[f'{split} · none'])} → {_rate(a)}", "held": _induce_held(a)})
    else:
        rows.append({"paper": "Arditi et al. 2024", "claim": "refusal is mediated by one direction",
                     "paper's number": "—", "this run": "not run", "held": None})
    _tag(rows, "03")
    dc = _load(run_dir, "decompose_refusal_direction")
    pair = paper_pair(dc["faithfulness"][dc["headline"]]["saes"]) if dc else None
    if pair:
        web = pair[0]  # the SAE that stands for Kissane et al.'s Pile SAE
        f = dc["faithfulness"][dc["headline"]]
        diff = f["differences"].get(f"chat - {web}")
        mc = dc["max_decoder_cosine"]
        k = dc["smallest_k"]
        proto_key = dc.get("paper_protocol")
        if proto_key:  # Kissane et al.'s own prompts and template: the row to compare with the paper
            proto = dc["protocols"][proto_key]
            pf, pm = proto["faithfulness"], proto["max_decoder_cosine"]
            pdiff = pf["differences"].get(f"chat - {web}")
            rows += [
                {"paper": "Kissane et al. 2024",
                 "claim": f"the chat SAE reconstructs r more faithfully than the {web} SAE (cosine; their prompts, no system turn)",
                 "paper's number": "0.849 vs 0.596",
                 "this run": f"{_ci(pf['saes']['chat']['cosine'])} vs {_ci(pf['saes'][web]['cosine'])}; difference "
                             f"{_ci(pdiff['cosine'])} (n={pf['n_harmful']}+{pf['n_harmless']})",
                 "held": pdiff["cosine"]["ci95"][0] > 0},
                {"paper": "Kissane et al. 2024",
                 "claim": "the chat SAE's best latent is closer to r (max decoder cosine; their prompts, no system turn)",
                 "paper's number": "0.678 vs 0.411", "this run": f"{pm['chat']['cosine']:.3f} vs {pm[web]['cosine']:.3f}",
                 "held": pm["chat"]["cosine"] > pm[web]["cosine"]},
            ]
            rows += _protocol_extra_rows(proto, web, run_dir)
        rows += [
            {"paper": "Kissane et al. 2024", "claim": f"the chat SAE reconstructs r more faithfully than the {web} SAE (cosine; our sets, preset template)",
             "paper's number": "0.849 vs 0.596", "this run": f"{_ci(f['saes']['chat']['cosine'])} vs "
             f"{_ci(f['saes'][web]['cosine'])}; difference {_ci(diff['cosine'])} (n={f['n_harmful']}+{f['n_harmless']})",
             "held": diff["cosine"]["ci95"][0] > 0},
            {"paper": "Kissane et al. 2024", "claim": "the chat SAE's best latent is closer to r (max decoder cosine; our sets, preset template)",
             "paper's number": "0.678 vs 0.411", "this run": f"{mc['chat']['cosine']:.3f} vs {mc[web]['cosine']:.3f}",
             "held": mc["chat"]["cosine"] > mc[web]["cosine"]},
            {"paper": "Kissane et al. 2024", "claim": "the chat SAE reconstructs r more sparsely (k for relative MSE ≤ 0.5, top-Δ latents by least "
                      "squares; our sets, preset template)",
             "paper's number": "fewer latents for chat",
             "this run": f"{_k_text(k['chat'].get('k for rel. MSE ≤ 0.5 (top Δ)'))} vs "
                         f"{_k_text(k[web].get('k for rel. MSE ≤ 0.5 (top Δ)'))}",
             "held": _fewer(k["chat"].get("k for rel. MSE ≤ 0.5 (top Δ)"), k[web].get("k for rel. MSE ≤ 0.5 (top Δ)"))},
        ]
        if dc.get("structured_control"):
            rows.append(_control_row(dc["structured_control"], "our sets, preset template; harmless-category and "
                                                                "harmful-category differences"))
    else:
        rows.append({"paper": "Kissane et al. 2024", "claim": "SAEs are dataset dependent", "paper's number": "—",
                     "this run": "not run", "held": None})
    _tag(rows, "04")
    st = _load(run_dir, "steering")
    pair = paper_pair(st["saes"]) if st else None
    if pair:
        b, side = st["bypass"], pair[0]
        r_abl = b["ablate r"]["substring"]

        def top(name: str, paper: bool) -> dict | None:
            """The bypass rate with `name`'s top latent ablated: the latent from Kissane et al.'s prompts, or ours."""
            if not paper:
                return b[f"ablate {name} top latent"]["substring"]
            key = next((k for k in b if k.startswith(f"ablate {name} top latent (Kissane")), None)
            return b[key]["substring"] if key else None

        for paper, which in ((True, "latent from their prompts"), (False, "latent from our sets")):
            chat, web = top("chat", paper), top(side, paper)
            if chat is None or web is None:
                continue
            rows += [
                {"paper": "Kissane et al. 2024",
                 "claim": f"ablating the chat SAE's top latent bypasses refusal about as well as r ({which})",
                 "paper's number": "close to r's ablation", "this run": f"{_rate(chat)} vs r {_rate(r_abl)}",
                 "held": abs(chat["rate"] - r_abl["rate"]) <= max(chat["stderr"], r_abl["stderr"])},
                {"paper": "Kissane et al. 2024",
                 "claim": f"the Pile ({side}) SAE's top latent bypasses less than the chat SAE's ({which})",
                 "paper's number": "well above r's ablation", "this run": f"{_rate(web)} vs chat {_rate(chat)}",
                 "held": web["rate"] > chat["rate"] + max(web["stderr"], chat["stderr"])},
            ]
        rows += [
            {"paper": "this project", "claim": f"latents needed to match r's bypass (within 1 s.e.; chat vs {side}, Δ ranking)",
             "paper's number": "—", "this run": f"{st['matching_k'].get('chat (delta)')} vs {st['matching_k'].get(f'{side} (delta)')}",
             "held": None},
        ]
    else:
        rows.append({"paper": "Kissane et al. 2024", "claim": "the chat SAE's refusal latent steers like r",
                     "paper's number": "—", "this run": "not run", "held": None})
    _tag(rows, "05")
    rg = _load(run_dir, "refusal_gradient")
    if rg:
        for name, c in rg["chat_vs_webtext"].items():
            pos, neg, rnd = c["top positive"], c["top negative"], c["random"]
            rows.append({"paper": "Lee, Breck & Arditi 2025",
                         "claim": f"adding top gradient latents raises refusal, negative ones lower it ({name} SAE)",
                         "paper's number": "qualitative",
                         "this run": f"Δ metric {pos['mean']:+.2f} ± {pos['se']:.2f} / {neg['mean']:+.2f} ± {neg['se']:.2f} "
                                     f"(random {rnd['mean']:+.2f} ± {rnd['se']:.2f}; n={pos['n']})",
                         "held": pos["mean"] - 2 * pos["se"] > rnd["mean"] + 2 * rnd["se"]
                         and neg["mean"] + 2 * neg["se"] < rnd["mean"] - 2 * rnd["se"]})
        rows += _specificity_rows(rg)
    else:
        rows.append({"paper": "Lee, Breck & Arditi 2025", "claim": "refusal gradients name prompt-specific upstream features",
                     "paper's number": "—", "this run": "not run", "held": None})
    _tag(rows, "06")
    return rows


def _control_row(control: dict, label: str) -> dict:
    """Is the chat SAE's edge about refusal? Held when its edge on r exceeds its edge on every control (each
    interval of edge(r) − edge(control) above 0), not when one is below 0, undecided (None) otherwise."""
    a, b = control["pair"]
    parts, los, his = [], [], []
    for d, v in control["directions"].items():
        if d == "r":
            continue
        lo, hi = v["edge_r_minus_edge"]["ci95"]
        los.append(lo)
        his.append(hi)
        parts.append(f"{d}: {v['edge_r_minus_edge']['estimate']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    held = True if min(los) > 0 else False if min(his) < 0 else None
    return {"paper": "Kissane et al. 2024",
            "claim": f"the {a} SAE's edge over the {b} SAE is about refusal (edge on r minus edge on a direction of r's "
                     f"kind without refusal; {label})",
            "paper's number": "—", "this run": "; ".join(parts) + ("" if held is not None else ": undecided"),
            "held": held}


def _protocol_extra_rows(proto: dict, web: str, run_dir: Path) -> list[dict]:
    """Their prompts' sparsity (both rankings), their control and the seed spread, each a row."""
    rows = []
    k = proto.get("smallest_k")
    if k:
        ours, theirs = "k for rel. MSE ≤ 0.5 (top Δ, least squares)", "k for rel. MSE ≤ 0.5 (Kissane et al.'s |Δf|·‖d‖, Adam)"
        rows.append({"paper": "Kissane et al. 2024",
                     "claim": "the chat SAE reconstructs r more sparsely (k for relative MSE ≤ 0.5, top-Δ latents by "
                              "least squares; their prompts, no system turn)",
                     "paper's number": "fewer latents for chat",
                     "this run": f"{_k_text(k['chat'][ours])} vs {_k_text(k[web][ours])}; their ranking and Adam fit "
                                 f"{_k_text(k['chat'][theirs])} vs {_k_text(k[web][theirs])}",
                     "held": _fewer(k["chat"][ours], k[web][ours])})
    if proto.get("style_control"):
        rows.append(_control_row(proto["style_control"], "their prompts, no system turn; the harmless side's "
                                                         "question − imperative style direction"))
    seeds = _load(run_dir, ".", "seed_variance.json")
    if seeds:
        key = next((k for k in seeds["summary"] if k.endswith(f" · {web}") and "no system turn" in k
                    and k.startswith("AdvBench")), None)
        if key:
            import statistics

            chat, other = seeds["summary"][key.removesuffix(f" · {web}") + " · chat"], seeds["summary"][key]

            def ms(v: list[float]) -> str:
                return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"

            rows.append({"paper": "Kissane et al. 2024",
                         "claim": f"the chat SAE reconstructs r more faithfully, over SAE training seeds (their "
                                  f"prompts, no system turn; mean ± sd over {len(chat['seeds'])} seeds)",
                         "paper's number": "0.849 vs 0.596 (one seed)",
                         "this run": f"cosine {ms(chat['cosine'])} vs {ms(other['cosine'])}; max decoder cosine "
                                     f"{ms(chat['max_decoder_cosine'])} vs {ms(other['max_decoder_cosine'])}",
                         "held": min(chat["cosine"]) > max(other["cosine"])})
    return rows


def _specificity_rows(rg: dict) -> list[dict]:
    """Lee et al.'s prompt specificity, one row per SAE and template, scored over the instruction's own tokens:
    top-k overlap between wordings of one request against between requests (`gradients.specificity`)."""
    from helpers.gradients import specificity_verdict

    rows = []
    for key, v in rg.get("specificity", {}).items():
        name, template, where = key.split(" · ")
        if where != "instruction tokens":
            continue

        def fmt(x: dict) -> str:
            return f"{x['estimate']:.2f} [{x['ci95'][0]:.2f}, {x['ci95'][1]:.2f}]"

        rows.append({"paper": "Lee, Breck & Arditi 2025",
                     "claim": f"the top latents are prompt-specific ({name} SAE; {v['n_requests']} requests × "
                              f"{v['n_wordings'] // v['n_requests']} wordings, instruction tokens, {template}; "
                              f"top-{v['k']} overlap within a request vs between requests)",
                     "paper's number": "a sexual-content latent for \"hugging a person\"",
                     "this run": f"within {fmt(v['within'])}, between {fmt(v['between'])}, "
                                 f"difference {fmt(v['difference'])}",
                     "held": specificity_verdict(v)})
    return rows


def _tag(rows: list[dict], notebook: str) -> None:
    for row in rows:
        row.setdefault("notebook", notebook)


def claims_table(run_dir: Path, notebook: str):
    """The claims notebook `notebook` ("03" ... "06") tests, as the report states them: did each hold at this run's
    size? (A notebook shows it under its results; rows of notebooks not run say so.)"""
    import pandas as pd

    rows = [{k: v for k, v in r.items() if k != "notebook"} for r in claims(Path(run_dir)) if r["notebook"] == notebook]
    return pd.DataFrame([{**r, "held": {True: "yes", False: "no", None: "—"}[r["held"]]} for r in rows])


def _ablation_held(base: dict, ablated: dict) -> bool:
    """Arditi et al.'s ablation claim: refusal falls below its baseline's interval, to at most a quarter of it."""
    return ablated["ci95"][1] < base["ci95"][0] and ablated["rate"] <= base["rate"] / 4


def _induce_held(added: dict) -> bool:
    """Arditi et al.'s addition claim: most harmless prompts refused."""
    return added["rate"] >= 0.5


def _reached(k) -> float | None:
    """A smallest-k entry of notebook 04 (None or NaN: no k in the sweep reached the threshold)."""
    return None if k is None or k != k else k


def _k_text(k) -> str:
    return "not reached" if _reached(k) is None else f"{k:.0f}"


def _fewer(a, b) -> bool | None:
    """Whether k = a is fewer latents than k = b, an unreached threshold counting as more than any k."""
    a, b = _reached(a), _reached(b)
    if a is None and b is None:
        return None
    return b is None or (a is not None and a < b)


def _section_body(run_dir: Path, folder: str) -> str:
    """The headline figures and tables of one notebook, from its results files."""
    res = _load(run_dir, folder)
    parts = []
    if folder == "00_meet_the_model":
        parts.append(_table([{"side": k, "refusal rate [95% CI]": _rate(v)} for k, v in res["refusal_rate"].items()]))
    elif folder == "cache_activations":
        parts.append(_table([{"cache": k, **v} for k, v in res["caches"].items()]))
    elif folder == "train_saes":
        rows = [{k: r.get(k) for k in ("SAE", "data", "l0", "explained_variance", "CE increase", "CE increase_se",
                                       "CE loss_recovered", "dead_fraction")} for r in res["evaluation"]]
        parts.append(_table(rows))
    elif folder == "refusal_direction":
        d = res["direction"]
        parts.append(f"<p>chosen: layer {d['layer']}, position {d['position']}; bypass {d['bypass_score']:.2f} ± "
                     f"{d.get('bypass_se', float('nan')):.2f}, induce {d['induce_score']:.3f} ± "
                     f"{d.get('induce_se', float('nan')):.3f}, KL {d['kl_score']:.3f} ± {d.get('kl_se', float('nan')):.3f}</p>")
        names = list(res["refusal_rate"])
        vals = [res["refusal_rate"][k] for k in names]
        fig = go.Figure(go.Bar(x=names, y=[100 * v["rate"] for v in vals], error_y=dict(
            type="data", symmetric=False, array=[100 * (v["ci95"][1] - v["rate"]) for v in vals],
            arrayminus=[100 * (v["rate"] - v["ci95"][0]) for v in vals])))
        fig.update_layout(title="Refusal rate on held-out prompts (95% Wilson CI)", yaxis_title="%", yaxis_range=[0, 105])
        parts.append(_figure(fig))
        if res.get("public_refusal_rate"):
            parts.append("<p>The same on Arditi et al.'s public splits (HarmBench validation, their AdvBench-mix "
                         "training file, Alpaca):</p>")
            parts.append(_table([{"split · condition": k, "refusal rate [95% CI]": _rate(v)}
                                 for k, v in res["public_refusal_rate"].items()]))
        scores = _load(run_dir, folder, "selection_scores.json")
        if scores:
            fig = go.Figure()
            for pos, row in zip(scores["positions"], scores["bypass"]):
                fig.add_trace(go.Scatter(y=row, mode="lines+markers", name=f"pos {pos}"))
            fig.update_layout(title="Bypass score by source layer", xaxis_title="layer", yaxis_title="refusal metric")
            parts.append(_figure(fig))
    elif folder == "decompose_refusal_direction":
        f = res["faithfulness"][res["headline"]]
        if res.get("protocols"):  # Kissane et al.'s protocol beside ours: which prompts and template each number used
            parts.append("<p>Each prompt set under each template (position −1; Kissane et al.'s own protocol is their "
                         "kind of prompts with no system turn):</p>")
            parts.append(_table([{"prompts · template": key, "‖r‖": round(p["r_norm"], 2),
                                  "split-half cosine": round(p["split_half_cosine"]["mean"], 2), "SAE": n,
                                  "cosine [95% CI]": _ci(v["cosine"]),
                                  "max decoder cosine": round(p["max_decoder_cosine"][n]["cosine"], 3)}
                                 for key, p in res["protocols"].items() for n, v in p["faithfulness"]["saes"].items()]))
        if res.get("control_verdict"):
            parts.append(f"<p>Structured control (category-group differences, our sets): "
                         f"{html.escape(res['control_verdict'])}</p>")
        parts.append(f"<p>Below: {html.escape(res.get('headline_protocol', 'our sets'))}.</p>")
        parts.append(_table([{"SAE": n, "cosine [95% CI]": _ci(v["cosine"]), "relative MSE [95% CI]": _ci(v["relative_mse"]),
                              "max decoder cosine": res["max_decoder_cosine"][n]["cosine"],
                              "latent": res["max_decoder_cosine"][n]["latent"]} for n, v in f["saes"].items()]))
        fig = go.Figure()
        for name, c in res["sparsity"].items():
            fig.add_trace(go.Scatter(x=c["k"], y=c["top_delta"], mode="lines+markers", name=name))
        fig.update_layout(title="Relative MSE of the least-squares fit of r with the top-k latents", xaxis_type="log",
                          xaxis_title="k", yaxis_title="relative MSE", yaxis_range=[0, 1.05])
        parts.append(_figure(fig))
    elif folder == "steering":
        rows = [{"condition": k, "prompts": "harmful", "refusal (substring)": _rate(v["substring"]),
                 "refusal (starts-with)": _rate(v["starts_with"]), "degenerate": _rate(v["degenerate"])}
                for k, v in {**res["bypass"], **res["clamp_bypass"]}.items()]
        parts.append(_table(rows))
        fig = go.Figure()
        for name in res["saes"]:
            for ranking in ("delta", "omp"):
                ys = [res["subspace_ablation"].get(f"ablate {name} top-{k} ({ranking})", {}).get("substring", {}).get("rate")
                      for k in res["ks"]]
                fig.add_trace(go.Scatter(x=res["ks"], y=ys, mode="lines+markers", name=f"{name} ({ranking})"))
        fig.add_hline(y=res["bypass"]["ablate r"]["substring"]["rate"], line_dash="dash", annotation_text="ablate r")
        fig.update_layout(title="Refusal rate with the top-k latents' span ablated", xaxis_type="log", xaxis_title="k",
                          yaxis_title="refusal rate", yaxis_range=[0, 1])
        parts.append(_figure(fig))
        parts.append(f"<p>smallest k within 1 s.e. of ablating r: {html.escape(json.dumps(res['matching_k']))}</p>")
    elif folder == "refusal_gradient":
        parts.append(f"<p>source layer {res['source_layer']}, target layer {res['target_layer']}, rule {res['rule']}, "
                     f"r-orthogonal {res['r_orthogonal']}</p>")
        parts.append(_table([{k: p[k] for k in ("instruction", "kind", "refusal_metric", "R", "refuses")} for p in res["prompts"]]))
        parts.append(_table([{"SAE": n, **{g: f"{v['mean']:+.3f} ± {v['se']:.3f} (n={v['n']})" for g, v in c.items()}}
                             for n, c in res["chat_vs_webtext"].items()]))
    return "\n".join(parts)


def build_report(preset: str) -> Path:
    """Write `runs/<preset>/report.html` from the run's results files and return its path."""
    from plotly.offline import get_plotlyjs

    cfg = get_config(preset)
    run_dir = cfg.run_dir
    timings = _load(run_dir, ".", "runner_timings.json") or {}
    parts = [f"<h1>refusal-toolkit · {html.escape(preset)} run</h1>",
             f"<p>model {html.escape(cfg.model)}; built {time.strftime('%Y-%m-%d %H:%M')} from the files in "
             f"<code>{html.escape(str(run_dir))}</code>.</p>",
             *([f"<p class='notrun'>The {html.escape(preset)} preset checks the mechanics at a small size: its numbers "
                "say nothing about the papers' claims (run the teach preset for a class, the offline one for the "
                "project's numbers).</p>"] if preset in MECHANICS_ONLY_PRESETS else []),
             "<h2>Claims</h2>",
             _table([{**{k: v for k, v in r.items() if k != "notebook"}, "held": {True: "yes", False: "no", None: "—"}[r["held"]]}
                     for r in claims(run_dir)])]
    for notebook, folder, title in SECTIONS:
        executed = run_dir / "notebooks" / notebook
        link = f' · <a href="notebooks/{notebook}">executed notebook</a>' if executed.exists() else ""
        secs = timings.get(notebook, {}).get("seconds")
        took = f" · <span class='timing'>{secs / 60:.1f} min</span>" if secs else ""
        parts.append(f"<h2>{html.escape(title)}</h2><p class='meta'>{notebook}{link}{took}</p>")
        if _load(run_dir, folder) is None:
            parts.append("<p class='notrun'>not run</p>")
            continue
        try:
            parts.append(_section_body(run_dir, folder))
        except (KeyError, TypeError, IndexError) as e:  # results from an older version of a notebook
            parts.append(f"<p class='notrun'>results file in an older format ({html.escape(repr(e))}); rerun the notebook</p>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>refusal-toolkit report</title>"
            f"<script>{get_plotlyjs()}</script><style>body{{font-family:sans-serif;max-width:1150px;margin:auto}}"
            "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
            ".notrun{color:#888;font-style:italic}.meta{color:#555}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
    return atomic_write_text(run_dir / "report.html", page)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline", help=f"one of {sorted(PRESETS)}")
    args = ap.parse_args(argv)
    if args.preset not in PRESETS:
        ap.exit(2, f"report: unknown preset {args.preset!r}; valid presets: {sorted(PRESETS)}\n")
    start = time.perf_counter()
    path = build_report(args.preset)
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
