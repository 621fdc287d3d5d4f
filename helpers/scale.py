"""The scale study: Kissane et al.'s SAE pair along width and training tokens (opt-in; `scripts/scale_study.py`).

Each corpus of the pair gets one long training cache, the preset's cache continued (`extend_cache`); a point of the
token axis trains on its first N tokens (`ActivationCache.head`), two epochs as the offline preset does. At every
point both SAEs train at matched L0 with notebook 02's full-length L1 search (`saes.train_or_reuse`), started where
the points already trained say the coefficient should be (`start_coefficient`), and are evaluated on Kissane et
al.'s protocol and on held-out text (`evaluate_point`); a few points also get the behavioural claims
(`behaviour_point`). One results file per point (`runs/<preset>/scale_study/points/<point>.json`, written last), so
an interrupted study resumes at the first point without one; the SAEs live in `scale_study/saes/<point>_<corpus>/`,
where notebooks 04-06 find them by name (`SAES=["w8192_u1600000_chat", ...]`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from helpers.activations import ActivationCache, cache_dir, cache_from_config, continue_cache, open_cache

# Kissane et al.'s point: 32,768 latents trained on 409.6M tokens (webtext = their Pile SAE, in the chat format)
PAPER_POINT = {"d_sae": 32_768, "training_tokens": 409_600_000}
EPOCHS = 2  # passes over the unique tokens, as the offline preset trains (800k tokens on a 400k-token cache)


@dataclass(frozen=True, order=True)
class Point:
    """One SAE size: `d_sae` latents trained for `EPOCHS` passes over the first `unique_tokens` tokens of each cache."""

    d_sae: int
    unique_tokens: int

    @property
    def name(self) -> str:
        return f"w{self.d_sae}_u{self.unique_tokens}"

    @property
    def training_tokens(self) -> int:
        return EPOCHS * self.unique_tokens

    @property
    def cost(self) -> int:
        """Relative training cost (latents x training tokens)."""
        return self.d_sae * self.training_tokens

    @classmethod
    def parse(cls, name: str) -> "Point":
        try:
            w, u = name.split("_")
            return cls(int(w.removeprefix("w")), int(u.removeprefix("u")))
        except ValueError:
            raise ValueError(f"{name!r} is not a scale-study point; names look like 'w4096_u400000'.") from None


def study_points(widths: list[int], token_counts: list[int], base_width: int = 4096) -> list[Point]:
    """The two sweeps: every width at the largest token count, every token count at `base_width`; cheapest first,
    so an interrupted study has filled in the small end of both axes."""
    for what, values in (("widths", widths), ("token counts", token_counts)):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"scale study: {what} must be positive integers, got {values!r}.")
    points = {Point(w, max(token_counts)) for w in widths} | {Point(base_width, t) for t in token_counts}
    return sorted(points, key=lambda p: (p.cost, p))


def study_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "scale_study"


def sae_name(point: Point, corpus: str) -> str:
    return f"{point.name}_{corpus}"


def extend_cache(model, cfg, corpus: str, n_tokens: int) -> ActivationCache:
    """The training cache of `corpus` with at least `n_tokens` tokens: the preset's own cache (notebook 01's) when it
    is long enough, else a longer one started from it (`continue_cache`) and cached on from there (resumable: a
    killed extension goes on where its last shard ended)."""
    own = cache_dir(cfg, corpus, "train")
    if cfg.cache_tokens >= n_tokens:
        return open_cache(cfg, model.name, corpus, "train")
    longer = cfg.replace(cache_tokens=n_tokens)
    continue_cache(own, cache_dir(longer, corpus, "train"), n_tokens)
    cache_from_config(model, longer, corpus, "train")
    return open_cache(longer, model.name, corpus, "train")


def start_coefficient(done: dict[Point, dict[str, float]], point: Point, corpus: str,
                      default: float) -> tuple[float, str]:
    """Where the L1 search of `corpus` at `point` starts, and how it was found: the final coefficient of the nearest
    trained point (in log width and log tokens), else `default`. Between two or more trained points of the same
    token count the coefficient is moved along the log-log line they fit against width (L0 at a fixed coefficient
    grows with width), likewise along tokens at the same width. `done[point][corpus]` = final coefficient."""
    have = {p: c[corpus] for p, c in done.items() if corpus in c and p != point}
    if not have:
        return default, "the preset's starting coefficient (no point trained yet)"

    def dist(p: Point) -> float:
        return math.hypot(math.log(p.d_sae / point.d_sae), math.log(p.unique_tokens / point.unique_tokens))

    near = min(have, key=lambda p: (dist(p), p))
    for axis, same in (("d_sae", "unique_tokens"), ("unique_tokens", "d_sae")):
        line = sorted((getattr(p, axis), c) for p, c in have.items() if getattr(p, same) == getattr(point, same))
        if len(line) >= 2 and getattr(near, same) == getattr(point, same):
            xs = [math.log(x) for x, _ in line]
            ys = [math.log(c) for _, c in line]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            sxx = sum((x - mx) ** 2 for x in xs)
            if sxx > 0:
                b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
                value = math.exp(my + b * (math.log(getattr(point, axis)) - mx))
                return value, (f"fitted along {axis} through {len(line)} trained points "
                               f"(log coefficient slope {b:+.2f})")
    return have[near], f"the final coefficient of the nearest trained point, {near.name}"


def completed(run_dir: Path) -> dict[Point, dict]:
    """Every point whose results file exists, with its results."""
    folder = study_dir(run_dir) / "points"
    out = {}
    for f in sorted(folder.glob("w*_u*.json")) if folder.is_dir() else []:
        out[Point.parse(f.stem)] = json.loads(f.read_text())
    return out


@torch.no_grad()
def dense_fraction(sae, acts: Tensor, threshold: float = 0.1) -> float:
    """Share of latents that fire on more than `threshold` of the tokens (dense latents)."""
    from helpers.decomposition import heldout_frequency

    return (heldout_frequency(sae, acts) > threshold).double().mean().item()


def evaluate_point(model, saes: dict, harmful: Tensor, harmless: Tensor, harmless_texts: list[str],
                   heldout: dict[str, Tensor], windows: dict[str, list[list[int]]], pair: tuple[str, str],
                   hook_name: str, ks: list[int], n_resamples: int = 1000, seed: int = 0,
                   outlier_factor: float | None = 10.0) -> dict:
    """Kissane et al.'s protocol (`decomposition.protocol_summary` on `harmful`/`harmless`, their activations at the
    hook: cosine and relative MSE of the reconstructed r with paired bootstrap intervals, max decoder cosine, the
    sparsity curves and smallest k, the style control) and, per SAE on its own corpus's held-out data (`heldout`:
    the report part, `windows`: the spliced-CE windows), L0, explained variance, MSE, dead and dense latents and
    the cross-entropy increase. `saes` is keyed by corpus."""
    from dataclasses import asdict

    from helpers.decomposition import protocol_summary
    from helpers.saes import reconstruction_stats, spliced_losses

    protocol = protocol_summary(saes, harmful, harmless, n_resamples, seed, ks=ks, harmless_texts=harmless_texts,
                                pair=pair)
    per_sae = {}
    for corpus, sae in saes.items():
        stats = asdict(reconstruction_stats(sae, heldout[corpus]))
        ce = spliced_losses(model, {corpus: sae}, windows[corpus], hook_name, outlier_factor=outlier_factor)[corpus]
        per_sae[corpus] = {**stats, "dense_fraction": dense_fraction(sae, heldout[corpus]),
                           "ce_increase": ce["increase"], "ce_increase_se": ce["increase_se"],
                           "loss_recovered": ce["loss_recovered"], "ce_windows": ce["n_windows"]}
    return {"protocol": protocol, "heldout": per_sae}


def behaviour_point(model, saes: dict, harmful_test: list[str], r_protocol: Tensor, baseline: dict,
                    max_new_tokens: int, batch_size: int, specificity: dict | None = None) -> dict:
    """The behavioural claims at one point: each SAE's top latent (largest decoder cosine with Kissane et al.'s r,
    the latent they steered with) projected out everywhere, judged on `harmful_test` against `baseline` (the
    "none" and "ablate r" conditions, generated once per study); `specificity` is
    `gradients.specificity_grid`'s result for these SAEs, passed through."""
    from helpers.decomposition import unit_decoder
    from helpers.evaluation import evaluate_refusal
    from helpers.steering import latent_ablation

    tops = {c: int((unit_decoder(sae).double() @ (r_protocol.double() / r_protocol.norm())).argmax())
            for c, sae in saes.items()}
    runs = evaluate_refusal(model, harmful_test, {f"ablate {c} top latent": latent_ablation(saes[c], [tops[c]])
                                                  for c in saes}, max_new_tokens, batch_size)
    keep = ("substring", "starts_with", "degenerate")
    return {"top_latent": tops, "n": len(harmful_test),
            "bypass": {**{k: {j: v[j] for j in keep} for k, v in baseline.items()},
                       **{k: {j: v[j] for j in keep} for k, v in runs.items()}},
            "specificity": {" · ".join(k): v for k, v in (specificity or {}).items()}}


# (label, unit, how to read it from a point's results and an SAE); the figures and the table use these
def _protocol(key: str):
    return lambda res, c: res["protocol"]["faithfulness"]["saes"][c][key]["estimate"]


def _interval(key: str):
    return lambda res, c: res["protocol"]["faithfulness"]["saes"][c][key]["ci95"]


METRICS = {
    "reconstruction cosine with r": (_protocol("cosine"), _interval("cosine")),
    "relative MSE of r̂": (_protocol("relative_mse"), _interval("relative_mse")),
    "max decoder cosine with r": (lambda res, c: res["protocol"]["max_decoder_cosine"][c]["cosine"], None),
    "k for relative MSE ≤ 0.5 (Kissane et al.'s ranking, Adam)": (
        lambda res, c: res["protocol"]["smallest_k"][c]["k for rel. MSE ≤ 0.5 (Kissane et al.'s |Δf|·‖d‖, Adam)"], None),
    "explained variance (held-out, own corpus)": (lambda res, c: res["heldout"][c]["explained_variance"], None),
    "CE increase (nats, held-out, own corpus)": (
        lambda res, c: res["heldout"][c]["ce_increase"],
        lambda res, c: [res["heldout"][c]["ce_increase"] - 1.96 * res["heldout"][c]["ce_increase_se"],
                        res["heldout"][c]["ce_increase"] + 1.96 * res["heldout"][c]["ce_increase_se"]]),
    "dead latents (share)": (lambda res, c: res["heldout"][c]["dead_fraction"], None),
    "dense latents (share firing on > 10% of tokens)": (lambda res, c: res["heldout"][c]["dense_fraction"], None),
    "L0 (held-out, own corpus)": (lambda res, c: res["heldout"][c]["l0"], None),
}
# the metrics measured on Kissane et al.'s protocol (the rest are the SAE's own held-out text)
PROTOCOL_METRICS = ("reconstruction cosine with r", "relative MSE of r̂", "max decoder cosine with r",
                    "k for relative MSE ≤ 0.5 (Kissane et al.'s ranking, Adam)")
# the paper's values at 32,768 latents / 409.6M tokens (decomposition.PAPER), by metric and side of the pair
PAPER_VALUES = {"reconstruction cosine with r": {"webtext": 0.596, "chat": 0.849},
                "max decoder cosine with r": {"webtext": 0.411, "chat": 0.678}}


def side(corpus: str) -> str:
    """"chat" or "webtext" (the paper's Pile SAE, which `webtext_chat` stands for)."""
    return "chat" if corpus == "chat" else "webtext"


def table_rows(points: dict[Point, dict], pair: tuple[str, str]) -> list[dict]:
    """One row per point and SAE: every metric of `METRICS`, the L1 coefficient, the seconds it took."""
    rows = []
    for p in sorted(points):
        res = points[p]
        for c in pair:
            row = {"point": p.name, "d_sae": p.d_sae, "unique tokens": p.unique_tokens,
                   "training tokens": p.training_tokens, "SAE": c,
                   "L1 coefficient": res["training"][c]["l1_coefficient"],
                   "rounds": res["training"][c]["rounds"], "L1 start": res["training"][c]["start"]}
            for label, (get, _) in METRICS.items():
                row[label] = get(res, c)
            row["seconds (training, this SAE)"] = res["training"][c]["seconds"]
            row["seconds (evaluation, both)"] = res["seconds"]["evaluation"]
            rows.append(row)
    return rows


def figures(points: dict[Point, dict], pair: tuple[str, str]) -> dict[str, "object"]:
    """One plotly figure per metric against training tokens (log axis), one line per width and SAE, with 95%
    intervals where the metric has one and the paper's value at 409.6M tokens as a dashed mark."""
    import plotly.graph_objects as go

    out = {}
    widths = sorted({p.d_sae for p in points})
    for label, (get, interval) in METRICS.items():
        fig = go.Figure()
        for c, dash in zip(pair, ("dot", "solid")):
            for w in widths:
                ps = sorted(p for p in points if p.d_sae == w)
                ys = [get(points[p], c) for p in ps]
                err = None
                if interval is not None:
                    ci = [interval(points[p], c) for p in ps]
                    err = dict(type="data", symmetric=False, array=[hi - y for (lo, hi), y in zip(ci, ys)],
                               arrayminus=[y - lo for (lo, hi), y in zip(ci, ys)])
                fig.add_trace(go.Scatter(x=[p.training_tokens for p in ps], y=ys, error_y=err, mode="lines+markers",
                                         line_dash=dash, name=f"{c}, {w:,} latents"))
            paper = PAPER_VALUES.get(label, {}).get(side(c))
            if paper is not None:
                fig.add_trace(go.Scatter(x=[PAPER_POINT["training_tokens"]], y=[paper], mode="markers",
                                         marker=dict(symbol="line-ew-open", size=24, line_width=3),
                                         name=f"paper, {side(c)} SAE ({PAPER_POINT['d_sae']:,} latents)"))
        fig.update_layout(title=f"{label} against training tokens (Kissane et al.'s protocol: AdvBench vs Alpaca, "
                                "no system turn, position −1)" if label in PROTOCOL_METRICS else
                          f"{label} against training tokens", xaxis_type="log", xaxis_title="training tokens",
                          yaxis_title=label)
        out[label] = fig
    return out


def fit_trend(xs: list[float], ys: list[float], at: float) -> dict | None:
    """Least-squares line of y against log10 x, its prediction at `at` with a 95% prediction interval (t
    quantile, n − 2 degrees of freedom); None with fewer than three points. Extrapolating over two orders of
    magnitude, the interval is wide: that is the answer, not a defect."""
    n = len(xs)
    if n < 3:
        return None
    from scipy import stats

    lx = [math.log10(x) for x in xs]
    mx, my = sum(lx) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in lx)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in zip(lx, ys)) / sxx
    a = my - b * mx
    resid = [y - (a + b * x) for x, y in zip(lx, ys)]
    s = math.sqrt(sum(r * r for r in resid) / (n - 2))
    x0 = math.log10(at)
    half = stats.t.ppf(0.975, n - 2) * s * math.sqrt(1 + 1 / n + (x0 - mx) ** 2 / sxx)
    pred = a + b * x0
    return {"slope_per_decade": b, "prediction": pred, "interval95": [pred - half, pred + half], "n_points": n}
