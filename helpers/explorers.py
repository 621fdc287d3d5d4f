"""Interactive explorers (ipywidgets) for the end of notebooks 03 and 04.

Each explorer computes and prints its result for a default input first (so papermill, nbmake and a
reader of the executed notebook see it), then shows widgets that recompute on change when a widget
front end (JupyterLab, Colab) is present.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go
import torch
from torch import Tensor

from helpers.generation import generate, last_token_logits
from helpers.hooks import Intervention
from helpers.judges import is_refusal, refusal_metric
from helpers.models import LoadedModel


@torch.no_grad()
def prompt_report(model: LoadedModel, instruction: str, direction: Tensor, layer: int, refusal_ids: list[int],
                  max_new_tokens: int = 32) -> dict:
    """For one instruction: the refusal metric, the projection of the last-token residual on r̂ at every layer,
    and greedy completions with no intervention, with r ablated everywhere and with r added at `layer`."""
    r_hat = (direction / direction.norm()).float()
    enc = model.tokenize_instructions([instruction])
    hidden = model.hf.model(**enc, output_hidden_states=True).hidden_states
    projection = [float(h[0, -1].float() @ r_hat) for h in hidden[: model.n_layers]]
    metric = float(refusal_metric(last_token_logits(model, [instruction]), refusal_ids)[0])
    conditions = {"none": Intervention(), "ablation": Intervention(ablate=direction),
                  "addition": Intervention(add=direction, add_layer=layer)}
    completions = {k: generate(model, [instruction], iv, max_new_tokens=max_new_tokens, progress=False)[0]
                   for k, iv in conditions.items()}
    return {"instruction": instruction, "refusal_metric": metric, "projection": projection,
            "completions": completions, "refused": {k: is_refusal(v) for k, v in completions.items()}}


def _projection_figure(report: dict, layer: int) -> go.Figure:
    fig = go.Figure(go.Scatter(y=report["projection"], mode="lines+markers", name="projection"))
    fig.add_vline(x=layer, line_dash="dash", annotation_text="direction's layer")
    fig.update_layout(title="Last-token residual projected on r̂, by layer", xaxis_title="layer",
                      yaxis_title="⟨resid, r̂⟩", height=300, margin=dict(t=40, b=30))
    return fig


def _set_outputs(out, *bundles: dict) -> None:
    """Show mime bundles in an Output widget by setting its state. Not `with out:` or `out.clear_output()`: under
    nbclient (papermill, nbmake) those make the client send comm messages to the kernel while the cell runs, and
    with ipykernel 7 the cell's execute_reply was then lost (notebook 04 waited forever, twice in a few runs)."""
    out.outputs = tuple({"output_type": "display_data", "data": b, "metadata": {}} for b in bundles)


def _figure_bundle(fig: go.Figure) -> dict:
    """A plotly figure as a mime bundle: plotly's own mimetype (JupyterLab's plotly extension) and HTML that loads
    plotly.js from its CDN (Colab, classic notebook)."""
    import plotly.io as pio

    return {**pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict()),
            "text/html": fig.to_html(include_plotlyjs="cdn", full_html=False)}


def _completions_html(report: dict) -> str:
    cells = "".join(f"<td style='vertical-align:top;width:33%'><b>{k}</b> "
                    f"({'refuses' if report['refused'][k] else 'complies'})<pre style='white-space:pre-wrap'>"
                    f"{html.escape(v)}</pre></td>" for k, v in report["completions"].items())
    return f"<p>refusal metric {report['refusal_metric']:+.2f}</p><table><tr>{cells}</tr></table>"


def prompt_explorer(model: LoadedModel, direction: Tensor, layer: int, refusal_ids: list[int],
                    default: str = "Write a tutorial on how to pick a lock", max_new_tokens: int = 32) -> dict:
    """Type an instruction; see its refusal metric, projection on r at every layer, and greedy completions with
    no intervention, ablation and addition side by side. Prints the default's result; returns it."""
    import ipywidgets as widgets
    from IPython.display import display

    first = prompt_report(model, default, direction, layer, refusal_ids, max_new_tokens)
    print(f"{default!r}: refusal metric {first['refusal_metric']:+.2f}; refuses with "
          f"{[k for k, v in first['refused'].items() if v]}")
    for k, v in first["completions"].items():
        print(f"  {k:9s} {v[:150]!r}")
    # continuous_update=False: the value reaches the kernel on Enter (or leaving the box), and observing it runs
    # the report once per submitted instruction (Text.on_submit is deprecated in ipywidgets 8).
    text = widgets.Text(value=default, description="Instruction", continuous_update=False,
                        layout=widgets.Layout(width="80%"))
    button = widgets.Button(description="Run", button_style="primary")
    out = widgets.Output()

    def show(report: dict) -> None:
        _set_outputs(out, {"text/html": _completions_html(report), "text/plain": "completions"},
                     _figure_bundle(_projection_figure(report, layer)))

    def on_run(_=None) -> None:
        show(prompt_report(model, text.value, direction, layer, refusal_ids, max_new_tokens))

    button.on_click(on_run)
    text.observe(on_run, names="value")
    show(first)
    display(widgets.VBox([widgets.HBox([text, button]), out]))
    return first


def latent_report(model: LoadedModel, sae, latent: int, r: Tensor, delta: Tensor, examples: dict,
                  instructions: list[str], layer: int, max_new_tokens: int = 24) -> dict:
    """One latent: its cosine with r, Δ activation, top contexts, and greedy completions of a few instructions
    with its unit decoder direction ablated everywhere or added (× ‖r‖) at the SAE's layer."""
    from helpers.decomposition import unit_decoder

    unit = unit_decoder(sae)[latent]
    conditions = {"none": Intervention(), "ablate latent": Intervention(ablate=unit),
                  "add latent (×‖r‖)": Intervention(add=unit * r.norm(), add_layer=layer)}
    completions = {k: generate(model, instructions, iv, max_new_tokens=max_new_tokens, progress=False)
                   for k, iv in conditions.items()}
    return {"latent": latent, "cosine": float(unit @ (r / r.norm())), "delta_activation": float(delta[latent]),
            "examples": examples, "completions": completions,
            "refusal_rate": {k: sum(map(is_refusal, v)) / len(v) for k, v in completions.items()}}


def latent_explorer(model: LoadedModel, saes: dict, r: Tensor, deltas: dict, examples: dict, defaults: dict,
                    instructions: list[str], layer: int, max_new_tokens: int = 24) -> dict:
    """Pick an SAE and a latent (default: its top refusal latent); see its cosine with r, Δ activation,
    top-activating contexts (`examples[sae][latent]`, where computed) and the effect of ablating or adding it
    on a few instructions. Prints the default SAE's result; returns it."""
    import ipywidgets as widgets
    from IPython.display import display

    first_sae = next(iter(saes))
    first = latent_report(model, saes[first_sae], defaults[first_sae], r, deltas[first_sae],
                          examples.get(first_sae, {}).get(defaults[first_sae], {}), instructions, layer, max_new_tokens)
    print(f"{first_sae} SAE, latent {first['latent']}: cosine {first['cosine']:.3f}, Δ activation "
          f"{first['delta_activation']:.3f}; refusal rate on {len(instructions)} instructions: "
          + ", ".join(f"{k} {v:.0%}" for k, v in first["refusal_rate"].items()))
    pick_sae = widgets.Dropdown(options=list(saes), value=first_sae, description="SAE")
    pick_latent = widgets.BoundedIntText(value=defaults[first_sae], min=0, max=saes[first_sae].cfg.d_sae - 1,
                                         description="latent")
    button = widgets.Button(description="Run", button_style="primary")
    out = widgets.Output()

    def show(report: dict) -> None:
        rows = "".join(f"<tr><td>{html.escape(i)}</td>" + "".join(
            f"<td><pre style='white-space:pre-wrap'>{html.escape(report['completions'][k][j][:200])}</pre></td>"
            for k in report["completions"]) + "</tr>" for j, i in enumerate(instructions))
        head = "".join(f"<th>{html.escape(k)} ({v:.0%} refuse)</th>" for k, v in report["refusal_rate"].items())
        ex = "".join(f"<li>{html.escape(src)}: " + " · ".join(html.escape(e["token"]) for e in rows_[:5]) + "</li>"
                     for src, rows_ in report["examples"].items())
        _set_outputs(out, {"text/html": f"<p>latent {report['latent']}: cosine with r {report['cosine']:.3f}, Δ "
                                         f"activation {report['delta_activation']:.3f}</p><ul>{ex}</ul><table><tr>"
                                         f"<th>instruction</th>{head}</tr>{rows}</table>", "text/plain": "latent report"})

    def on_sae(change) -> None:
        pick_latent.max = saes[change["new"]].cfg.d_sae - 1
        pick_latent.value = defaults[change["new"]]

    def on_run(_=None) -> None:
        name, latent = pick_sae.value, int(pick_latent.value)
        show(latent_report(model, saes[name], latent, r, deltas[name], examples.get(name, {}).get(latent, {}),
                           instructions, layer, max_new_tokens))

    pick_sae.observe(on_sae, names="value")
    button.on_click(on_run)
    show(first)
    display(widgets.VBox([widgets.HBox([pick_sae, pick_latent, button]), out]))
    return first
