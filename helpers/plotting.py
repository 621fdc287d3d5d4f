"""Plotly figure helpers: one function per kind of plot, titled, labelled, paper values dashed."""

from __future__ import annotations

from typing import Mapping, Sequence

import plotly.graph_objects as go

from helpers.judges import Rate


def rates_bar(rates: Mapping[str, Rate], title: str, paper: Mapping[str, float] | None = None) -> go.Figure:
    """Bar chart of rates (%) with 95% Wilson-interval error bars and n on each bar."""
    names = list(rates)
    fig = go.Figure(go.Bar(
        x=names, y=[100 * rates[k].rate for k in names],
        error_y=dict(type="data", symmetric=False,
                     array=[100 * (rates[k].interval[1] - rates[k].rate) for k in names],
                     arrayminus=[100 * (rates[k].rate - rates[k].interval[0]) for k in names]),
        text=[f"{100 * rates[k].rate:.0f}% (n={rates[k].n})" for k in names], textposition="outside",
        name="this run"))
    for name, value in (paper or {}).items():
        fig.add_hline(y=100 * value, line_dash="dash", annotation_text=f"paper: {name}")
    fig.update_layout(title=title, yaxis_title="refusal rate (%)", yaxis_range=[0, 110], showlegend=False)
    return fig


def histograms(groups: Mapping[str, Sequence[float]], title: str, xlabel: str, nbins: int = 30) -> go.Figure:
    """Overlaid histograms of one quantity for several groups."""
    fig = go.Figure()
    for name, values in groups.items():
        fig.add_trace(go.Histogram(x=list(values), name=f"{name} (n={len(values)})", opacity=0.6, nbinsx=nbins))
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title="count", barmode="overlay")
    return fig


def layer_sweep(scores: Sequence[Sequence[float]], positions: Sequence[str], title: str, ylabel: str,
                baseline: float | None = None, chosen: tuple[int, int] | None = None,
                errors: Sequence[Sequence[float]] | None = None) -> go.Figure:
    """One line per position over source layers (`scores[pos][layer]`, optional ±`errors` bars), baseline
    dashed, chosen point marked."""
    fig = go.Figure()
    for p, (label, row) in enumerate(zip(positions, scores)):
        err = None if errors is None else dict(type="data", array=list(errors[p]), visible=True, thickness=1)
        fig.add_trace(go.Scatter(x=list(range(len(row))), y=list(row), mode="lines+markers", name=f"pos {label}",
                                 error_y=err))
    if baseline is not None:
        fig.add_hline(y=baseline, line_dash="dash", annotation_text="no intervention")
    if chosen is not None:
        pos, layer = chosen
        fig.add_trace(go.Scatter(x=[layer], y=[scores[pos][layer]], mode="markers", name="chosen",
                                 marker=dict(size=14, symbol="star", color="black")))
    fig.update_layout(title=title, xaxis_title="source layer", yaxis_title=ylabel)
    return fig


def k_sweep(ks: Sequence[int], curves: Mapping[str, tuple[Sequence[Rate], str]], title: str,
            levels: Mapping[str, float] | None = None) -> go.Figure:
    """Refusal rate against k on a log axis: one line per curve (name -> (a Rate per k, line dash)) with ±1 s.e.
    bars, and reference levels (name -> rate) as dashed horizontal lines."""
    fig = go.Figure()
    for name, (rates, dash) in curves.items():
        fig.add_trace(go.Scatter(x=list(ks), y=[r.rate for r in rates], mode="lines+markers", line_dash=dash, name=name,
                                 error_y=dict(type="data", array=[r.stderr for r in rates])))
    for i, (name, value) in enumerate((levels or {}).items()):
        fig.add_hline(y=value, line_dash="dash", line_color="black" if i == 0 else "grey", annotation_text=name)
    fig.update_layout(title=title, xaxis_type="log", xaxis_title="k latents", yaxis_title="refusal rate",
                      yaxis_range=[0, 1])
    return fig
