"""Tables and pages the notebooks show, built from their results (so a notebook cell stays a line or two)."""

from __future__ import annotations

import html
import math

import pandas as pd


def fmt_interval(d: dict) -> str:
    """"0.344 [0.256, 0.515]" from `{"estimate": ..., "ci95": [lo, hi]}`."""
    return f"{d['estimate']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"


def fmt_se(value: float, se: float, spec: str = ".3f") -> str:
    """"+0.319 ± 0.012"; with one sample (a standard error of NaN) "+0.319 (one window: no s.e.)"."""
    if math.isnan(se):
        return f"{value:{spec}} (one window: no s.e.)"
    return f"{value:{spec}} ± {se:.3f}"


def protocol_table(protocols: dict[str, dict], sae_names: list[str], pair: tuple[str, str] | None) -> pd.DataFrame:
    """Notebook 04's prompt-set × template grid (`decomposition.protocol_grid`): per row (protocol, SAE) ‖r‖, the
    split-half cosine of r, the cosine and relative MSE of r̂ with intervals and the max decoder cosine; with `pair`
    (webtext side, chat) a row of the chat SAE's edge."""
    rows = {}
    for key, prot in protocols.items():
        f = prot["faithfulness"]
        for name in sae_names:
            top = prot["max_decoder_cosine"][name]
            rows[(key, name)] = {
                "‖r‖": round(prot["r_norm"], 2),
                "split-half cosine of r": f"{prot['split_half_cosine']['mean']:.2f} ± {prot['split_half_cosine']['sd']:.2f}",
                "cosine of r̂ [95% CI]": fmt_interval(f["saes"][name]["cosine"]),
                "relative MSE [95% CI]": fmt_interval(f["saes"][name]["relative_mse"]),
                "max decoder cosine (latent)": f"{top['cosine']:.3f} ({top['latent']})"}
        if pair:
            rows[(key, f"chat − {pair[0]}")] = {
                "cosine of r̂ [95% CI]": fmt_interval(f["differences"][f"chat - {pair[0]}"]["cosine"])}
    return pd.DataFrame(rows).T.fillna("")


def judged_rates_table(sides: dict[str, dict[str, dict]]) -> pd.DataFrame:
    """One row per condition of `evaluate_refusal` results grouped by prompts (side -> condition -> result): the
    refusal rate ± its standard error under the substring and the starts-with judge."""
    def cell(r: dict) -> str:
        return f"{r['rate']:.1%} ± {r['stderr']:.1%}"

    return pd.DataFrame({cond: {"prompts": side, "substring": cell(v["substring"]), "starts-with": cell(v["starts_with"])}
                         for side, conds in sides.items() for cond, v in conds.items()}).T


def context_text(examples: list[dict], k: int = 2) -> str:
    """The `k` strongest top-activating contexts of a latent, "…before[[token]]" joined by " | "."""
    best = sorted(examples, key=lambda e: -e["activation"])[:k]
    return " | ".join(f"…{e['before'][-40:]}[[{e['token']}]]" for e in best) or "(never fires held-out)"


def gradient_latents_html(title: str, prompts: dict[str, str], tops: dict[str, dict], cos_with_r,
                          contexts: dict[int, list[dict]]) -> str:
    """Notebook 06's page for one SAE: for each prompt (`{prompt: kind}`), its top latents of each sign
    (`tops[prompt]` from `gradients.top_latents`) with score, cosine with r and top held-out contexts."""
    parts = [f"<html><meta charset=utf-8><body><h2>{html.escape(title)}</h2>"]
    for p, kind in prompts.items():
        parts.append(f"<h3>{html.escape(p)} <small>({html.escape(kind)})</small></h3><table border=1><tr><th>sign</th>"
                     "<th>latent</th><th>score</th><th>cos with r</th><th>top contexts</th></tr>")
        for sign, lst in tops[p].items():
            for k, v in lst:
                parts.append(f"<tr><td>{sign}</td><td>{k}</td><td>{v:.4f}</td><td>{float(cos_with_r[k]):.3f}</td>"
                             f"<td>{html.escape(context_text(contexts.get(k, [])))}</td></tr>")
        parts.append("</table>")
    return "\n".join(parts) + "</body></html>"


def markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a GitHub markdown table (its index left out; floats to `digits` decimals), for docs pages."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "–"  # missing, or not reached (a smallest k above the largest tried)
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
