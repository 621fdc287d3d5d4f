"""Checks for the exercises (teaching mode): one per exercise, each naming the mistake it finds.

Every check runs the learner's function first on small random tensors (no model, under a second), compares it with
this package's implementation, and, when it differs, tries the known mistakes for that exercise (sign flipped,
direction not normalised, wrong position, only `hook_resid_pre` hooked, float16 accumulation, decoder rows not
normalised ...): if the learner's answer is what a mistake would give, the check says so in one line. Given the
model (or an SAE) it then compares on real activations too. A failed check raises `CheckFailed` (an AssertionError);
a passed one prints one line starting with ✓.

    from helpers import checks
    checks.difference_of_means(difference_of_means)                 # random tensors only
    checks.difference_of_means(difference_of_means, model, harmful, harmless)  # and on the model
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from helpers.hooks import Intervention, ablate_direction


class CheckFailed(AssertionError):
    """A learner's function gave a wrong answer; the message says which mistake it looks like."""


@dataclass(frozen=True)
class Mistake:
    """What a known mistake would return on the check's inputs (`wrong()`), and the hint to give when it matches."""

    hint: str
    wrong: Callable[[], object]


def _snapshot(arg) -> dict[str, Tensor]:
    """What a learner's function must not change: a tensor argument, or an SAE's weights."""
    if isinstance(arg, Tensor):
        return {"": arg.detach().clone()}
    if hasattr(arg, "W_dec") and hasattr(arg, "state_dict"):
        return {f".{k}": v.detach().clone() for k, v in arg.state_dict().items()}
    return {}


def _run(name: str, fn: Callable, *args, errors: tuple[tuple[str, str], ...] = ()):
    """`fn(*args)`, turning the learner's errors into a CheckFailed (naming the mistake when the error's text holds
    one of `errors`' needles: (needle, hint)), and failing when it edited an input in place (in the notebook that
    would rewrite activations or the SAE every later cell uses)."""
    before = [_snapshot(a) for a in args]
    result = _call(name, fn, *args, errors=errors)
    for i, (arg, snap) in enumerate(zip(args, before)):
        now = _snapshot(arg)
        changed = [k for k, v in snap.items() if k in now and not torch.equal(now[k], v)]
        if changed:
            what = f"argument {i + 1}" + (f" (the SAE's {changed[0][1:]})" if changed[0] else "")
            raise CheckFailed(f"{name} changed its {what} in place (an in-place operation such as `x /= ...` or "
                              "`x[...] = ...` on an input): in the notebook that rewrites what later cells use; "
                              "work on a copy (`x = x / ...`).")
    return result


def _call(name: str, fn: Callable, *args, errors: tuple[tuple[str, str], ...] = ()):
    try:
        return fn(*args)
    except NotImplementedError:
        raise CheckFailed(f"{name} still raises NotImplementedError: write its body (or open the solution under "
                          "it, copy it into the function's cell and run that cell again).") from None
    except CheckFailed:
        raise
    except Exception as e:  # noqa: BLE001 - the learner's error, shown with the check's context
        hint = next((h for needle, h in errors if needle in str(e)), None)
        if hint:
            raise CheckFailed(f"{name}: {hint} ({type(e).__name__}: {e})") from e
        raise CheckFailed(f"{name} raised {type(e).__name__}: {e}") from e


def _as_tensor(name: str, value, like: Tensor) -> Tensor:
    if isinstance(value, (int, float)):
        value = torch.tensor(float(value))
    if not isinstance(value, Tensor):
        raise CheckFailed(f"{name} returned a {type(value).__name__}; it should return a torch.Tensor of shape "
                          f"{tuple(like.shape)}.")
    return value


def _distance(a: Tensor, b: Tensor) -> float:
    return (a.detach().double().cpu() - b.detach().double().cpu()).norm().item()


def log_tolerance(name: str, observed: float, bound: float, file: str, line: int | None) -> None:
    """Append one observed error and its bound as a JSON line to REFUSAL_TOLERANCE_LOG when it is set (the tests'
    `assert_within` and these checks both log; scripts/tolerance_margins.py reads the file)."""
    log = os.environ.get("REFUSAL_TOLERANCE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"name": name, "observed": observed, "bound": bound, "file": file, "line": line,
                                "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]}) + "\n")


def _log_tolerance(name: str, where: str, error: float, rtol: float) -> None:
    log_tolerance(f"checks.{name} {where}", error, rtol, "checks.py", None)


def _compare(name: str, got, want: Tensor, mistakes: list[Mistake], where: str, rtol: float = 1e-4,
             shape_hint: str = "", scale: float = 0.0) -> float:
    """Relative error ‖got − want‖ / max(‖want‖, `scale`) of `got` against `want`; CheckFailed naming the matching
    mistake when it is wrong. `scale` is the size of the inputs the answer is computed from, where `want` is a
    small difference of large values (a difference of means of Qwen's ~10³ residuals): float32 rounding of the
    inputs is then relative to them, not to the difference.

    Margins (scripts/tolerance_margins.py, docs/measurements/tolerances.json: 1 and 2 threads, three MKL code paths):
    right answers in tests/test_checks.py, float32 ones included, came within 5.5e-8 of the reference on random
    tensors (rtol 1e-5 or 1e-4: at least 180x) and within 1.3e-5 on the model (rtol 1e-3: at least 80x)."""
    got = _as_tensor(name, got, want)
    if tuple(got.shape) != tuple(want.shape):
        raise CheckFailed(f"{name} returned shape {tuple(got.shape)} {where}; expected {tuple(want.shape)}"
                          + (f": {shape_hint}" if shape_hint else "."))
    if got.dtype in (torch.float16, torch.bfloat16):
        raise CheckFailed(f"{name} returned {got.dtype}: accumulate in float32 or float64 — Qwen's residual has "
                          "values near 10³, where float16 cannot hold the small differences that matter.")
    if not bool(torch.isfinite(got).all()):
        raise CheckFailed(f"{name} returned NaN or infinite values {where}.")
    scale = max(want.detach().double().norm().item(), scale, 1e-12)
    error = _distance(got, want) / scale
    if error <= rtol:  # what a right answer comes to (wrong answers are the mistakes' business)
        _log_tolerance(name, where, error, rtol)
    if error <= rtol:
        return error
    matches = []  # (how close, hint) for each mistake whose answer the learner's is near
    for m in mistakes:
        wrong = m.wrong()
        wrong = wrong if isinstance(wrong, Tensor) else torch.tensor(float(wrong))
        if tuple(wrong.shape) != tuple(want.shape):
            continue
        gap = _distance(wrong, want)
        if gap > 0 and _distance(got, wrong) <= 0.1 * gap:
            matches.append((_distance(got, wrong) / gap, m.hint))
    if matches:
        raise CheckFailed(f"{name}: {min(matches)[1]}")
    raise CheckFailed(f"{name} differs from the reference {where}: relative error {error:.2e} (tolerance "
                      f"{rtol:.0e}). Compare it step by step with the docstring.")


def _passed(name: str, stages: list[str]) -> None:
    print(f"✓ {name}: matches helpers {' and '.join(stages)}.")


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- 03 · the refusal direction ---------------------------------------------------------------------------------

def difference_of_means(fn: Callable[[Tensor, Tensor], Tensor], model=None, harmful: list[str] | None = None,
                        harmless: list[str] | None = None) -> None:
    """Check `fn(harmful_acts, harmless_acts)`: residuals `[n, n_positions, n_layers, d_model]` of each side ->
    r `[n_positions, n_layers, d_model]`, the mean over harmful prompts minus the mean over harmless ones."""
    name = "difference_of_means"
    g = _generator()
    # Qwen-like: a large shared offset (massive activations ~10³) and a small difference between the sides
    offset = 1000 * torch.randn(1, 3, 4, 8, generator=g)
    h = offset + torch.randn(7, 3, 4, 8, generator=g) + 0.05
    hl = offset + torch.randn(5, 3, 4, 8, generator=g)
    want = h.double().mean(0) - hl.double().mean(0)
    mistakes = [
        Mistake("the sign is flipped: r is mean(harmful) − mean(harmless), pointing towards refusal.", lambda: -want),
        Mistake("r is normalised; keep the raw difference (its norm is the size of the harmful/harmless gap, and "
                "activation addition adds r itself).", lambda: want / want.norm(dim=-1, keepdim=True)),
        Mistake("the means lost precision: accumulate in float32 or float64 (the residual has values near 10³; "
                "float16 rounds them to ±0.5).", lambda: (h.half().mean(0) - hl.half().mean(0)).double()),
        Mistake("that is only the harmful mean: subtract the harmless prompts' mean.", lambda: h.double().mean(0)),
        Mistake("you added the means: r is their difference, mean(harmful) − mean(harmless).",
                lambda: h.double().mean(0) + hl.double().mean(0)),
    ]
    # relative to the means' size (~10³ per entry): float32 means err by 5.5e-8 of it (measured, 180x below rtol),
    # float16 by ~2e-4
    prompts_axis = ((f"size of tensor a ({len(h)}) must match the size of tensor b ({len(hl)})",
                     "average over prompts (dim 0) only: the two sides have different numbers of prompts."),)
    _compare(name, _run(name, fn, h.clone(), hl.clone(), errors=prompts_axis), want, mistakes,
             "on random tensors [7 and 5 prompts, "
             "3 positions, 4 layers, d_model 8]", rtol=1e-5,
             shape_hint="average over prompts (dim 0) only; keep one direction per position and layer.",
             scale=h.double().mean(0).norm().item())
    stages = ["on random tensors"]
    if model is not None:
        from helpers.directions import candidate_directions, post_instruction_positions, residuals_at

        harmful, harmless = (harmful or [])[:4], (harmless or [])[:4]
        if not harmful or not harmless:
            raise ValueError("checks.difference_of_means with a model needs harmful= and harmless= instructions.")
        positions = post_instruction_positions(model)
        acts = residuals_at(model, harmful, positions)
        got = _run(name, fn, acts, residuals_at(model, harmless, positions))
        ref = candidate_directions(model, harmful, harmless)
        _compare(name, got, ref, [Mistake("the sign is flipped: harmful minus harmless.", lambda: -ref)],
                 f"on the model ({len(harmful)} + {len(harmless)} prompts)", rtol=1e-4,
                 scale=acts.double().mean(0).norm().item())
        stages.append("on the model")
    _passed(name, stages)


HOOK_POINTS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")


def _hook_point(name: str):
    """TransformerLens' own HookPoint named `name`, so a learner's hook can use its API (`hook.name`,
    `hook.layer()`) exactly as on the model."""
    from transformer_lens.hook_points import HookPoint

    point = HookPoint()
    point.name = name
    return point


def _hook_names(hooks) -> list[str]:
    if not isinstance(hooks, (list, tuple)) or not all(isinstance(h, (list, tuple)) and len(h) == 2 for h in hooks):
        raise CheckFailed("return a list of (hook name, hook function) pairs, as TransformerLens' fwd_hooks take.")
    return [h[0] for h in hooks]


def _apply_hooks(hooks, acts: Tensor) -> dict[str, Tensor]:
    out = {}
    for hook_name, f in hooks:
        try:
            result = f(acts.clone(), _hook_point(hook_name))
        except Exception as e:  # noqa: BLE001 - the learner's hook failed: say which, with its error
            raise CheckFailed(f"your hook on {hook_name} raised {type(e).__name__} on activations of shape "
                              f"{tuple(acts.shape)} [batch, position, d_model]: {e}") from e
        if result is None:
            raise CheckFailed(f"the hook on {hook_name} returned None: return the edited activations.")
        out[hook_name] = result
    return out


def _ablation_names(hooks, n_layers: int) -> None:
    names = _hook_names(hooks)
    want_names = {f"blocks.{L}.{p}" for L in range(n_layers) for p in HOOK_POINTS}
    if set(names) != want_names:
        missing = sorted(want_names - set(names))
        if names and all(n.endswith("hook_resid_pre") for n in names):
            raise CheckFailed("only hook_resid_pre is hooked: attention and MLP outputs write r back inside each "
                              "layer; hook blocks.L.hook_attn_out and blocks.L.hook_mlp_out too.")
        layers = sorted({int(n.split(".")[1]) for n in names if n.split(".")[1].isdigit()})
        if names and layers != list(range(n_layers)):
            raise CheckFailed(f"hook every layer 0..n_layers-1 (n_layers={n_layers}); yours hooks layers "
                              f"{layers[:6]}{' ...' if len(layers) > 6 else ''}.")
        raise CheckFailed(f"the hook names differ from what ablation needs; missing {missing[:4]}, "
                          f"unexpected {sorted(set(names) - want_names)[:4]}.")


def ablation_hooks(fn: Callable[[Tensor, int], list], model=None, direction: Tensor | None = None,
                   prompts: list[str] | None = None) -> None:
    """Check `fn(direction, n_layers)` -> TransformerLens fwd_hooks that project r̂ out of
    `blocks.L.hook_resid_pre`, `hook_attn_out` and `hook_mlp_out` at every layer L."""
    name = "ablation_hooks"
    g = _generator(1)
    n_layers, d = 3, 8
    r = 5 * torch.randn(d, generator=g)
    hooks = _run(name, fn, r, n_layers)
    _ablation_names(hooks, n_layers)
    acts = 3 * torch.randn(2, 5, d, generator=g)
    want = ablate_direction(acts, r)
    r_unit = r / r.norm()
    mistakes = [
        Mistake("the direction is not normalised: project onto r̂ = r/‖r‖ (with r itself you remove ‖r‖² times "
                "the component).", lambda: acts - (acts @ r)[..., None] * r),
        Mistake("you add the projection instead of subtracting it: x − (x·r̂) r̂.",
                lambda: acts + (acts @ r_unit)[..., None] * r_unit),
        Mistake("the orthogonal part is lost: keep x − (x·r̂) r̂, not the projection itself.",
                lambda: (acts @ r_unit)[..., None] * r_unit),
        Mistake("everything is zeroed: only the component along r̂ should go.", lambda: torch.zeros_like(acts)),
        Mistake("the projection is divided by ‖r‖ once: project onto r̂ = r/‖r‖ (or divide (x·r) r by ‖r‖²).",
                lambda: acts - (acts @ r)[..., None] * r / r.norm()),
        Mistake("only the last position is ablated: project r̂ out at every position.",
                lambda: torch.cat([acts[:, :-1], ablate_direction(acts[:, -1:], r)], dim=1)),
    ]
    for hook_name, got in _apply_hooks(hooks, acts).items():
        _compare(name, got, want, mistakes, f"at {hook_name} on random activations [2, 5, 8]", rtol=1e-5)
    stages = ["on random tensors"]
    if model is not None:
        hooks = _run(name, fn, direction, model.n_layers)
        _ablation_names(hooks, model.n_layers)
        _model_logits_match(name, model, hooks=hooks, reference=Intervention(ablate=direction), prompts=prompts)
        stages.append("on the model")
    _passed(name, stages)


def _model_logits_match(name: str, model, hooks, reference: Intervention, prompts: list[str] | None,
                        rtol: float = 1e-3) -> None:
    from helpers.generation import last_token_logits

    if not prompts:
        raise ValueError(f"checks.{name} with a model needs prompts=[...] (two or three instructions).")
    prompts = prompts[:3]
    with model.hooks(reference):
        want = last_token_logits(model, prompts)
    with model.tl.hooks(fwd_hooks=hooks):
        got = last_token_logits(model, prompts)
    error = _distance(got, want) / want.double().norm().item()
    if error <= rtol:
        _log_tolerance(name, "last-token logits on the model", error, rtol)
    if error > rtol:
        raise CheckFailed(f"{name}: on the model, the last-token logits with your hooks differ from helpers' by "
                          f"{error:.2e} (relative) on {len(prompts)} prompts; it passed on random tensors, so "
                          "check the hook names' layer range and that the direction is on the model's device/dtype.")


LAYOUT = ("the rows of an nn.Linear weight are its outputs (d_model here, `weight` is [d_model, d_in]): remove r̂ "
          "from the d_model side, W − r̂ (r̂ᵀ W).")


def orthogonalize(fn: Callable[[Tensor, Tensor], Tensor], model=None, direction: Tensor | None = None,
                  prompts: list[str] | None = None) -> None:
    """Check `fn(weight, direction)`: a weight whose rows live in the residual stream (nn.Linear layout
    `[d_model, d_in]`, as `o_proj` and `down_proj`) -> W − r̂ r̂ᵀ W, which can no longer write along r."""
    name = "orthogonalize"
    g = _generator(2)
    W = torch.randn(8, 12, generator=g)
    r = 4 * torch.randn(8, generator=g)
    r_unit = r / r.norm()
    want = W - torch.outer(r_unit, r_unit @ W)
    mistakes = [
        Mistake("the direction is not normalised: use r̂ = r/‖r‖ in W − r̂ r̂ᵀ W.", lambda: W - torch.outer(r, r @ W)),
        Mistake("the sign is flipped: subtract r̂ r̂ᵀ W.", lambda: W + torch.outer(r_unit, r_unit @ W)),
        Mistake("you returned r̂ r̂ᵀ W, the part to remove; return W minus it.", lambda: torch.outer(r_unit, r_unit @ W)),
    ]
    mistakes.append(Mistake("the weight came back unchanged: remove r̂ r̂ᵀ W from it.", lambda: W))
    mistakes.append(Mistake("the projection is divided by ‖r‖ once (or r̂ is used on one side only): W − r̂ (r̂ᵀ W).",
                            lambda: W - torch.outer(r, r @ W) / r.norm()))
    try:
        got = _run(name, fn, W.clone(), r)
    except CheckFailed as e:  # a shape error from the learner's code: say which layout the weight has
        cause = e.__cause__
        if isinstance(cause, (RuntimeError, IndexError)) and any(w in str(cause) for w in ("size", "shape", "dimension")):
            raise CheckFailed(f"{name}: {LAYOUT} ({type(cause).__name__}: {cause})") from cause
        raise
    _compare(name, got, want, mistakes, "on a random [8, 12] weight", rtol=1e-5,
             shape_hint=LAYOUT)
    stages = ["on random tensors"]
    if model is not None:
        from helpers.evaluation import orthogonalization_check

        if not prompts:
            raise ValueError("checks.orthogonalize with a model needs prompts=[...].")
        diff = orthogonalization_check(model, direction, prompts[:3], project=lambda w, d: _run(name, fn, w, d))
        if diff <= 1e-3:
            _log_tolerance(name, "orthogonalized model vs ablation, relative logits", diff, 1e-3)
        if diff > 1e-3:
            raise CheckFailed(f"{name}: the model with your orthogonalized weights differs from ablation by "
                              f"{diff:.2e} (relative logits); it passed on random tensors, so check dtype/device.")
        stages.append(f"on the model (logits equal ablation's to {diff:.0e})")
    _passed(name, stages)


def tiny_llama(seed: int = 0):
    """A random 2-layer Llama (vocab 48, d_model 8) with biases on the attention and MLP outputs and the unembedding
    tied to the embedding: every case `orthogonalized_model` must handle, in a model that builds in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=48, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, attention_bias=True, mlp_bias=True, tie_word_embeddings=True)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # biases start at zero: give them values, or leaving them out would go unseen
            p.normal_(0, 0.5)
    return hf


# (a part of the name of a parameter the learner left as it was, the hint); checked in this order
_UNCHANGED_HINTS = (
    ("embed_tokens", "the token embedding was left out: it writes each token's vector into the residual stream "
                     "(orthogonalize its transpose: rows are tokens)."),
    ("proj.bias", "the biases were left out: o_proj's and down_proj's biases are added to the residual stream too "
                  "(project each as one column, project(b[:, None], r)[:, 0])."),
    ("o_proj", "the attention outputs (self_attn.o_proj) were left out: attention writes into the residual stream."),
    ("down_proj", "the MLP outputs (mlp.down_proj) were left out: the MLP writes into the residual stream."),
)
# parameters that read from the residual stream (or the unembedding): changing them is the mistake
_READERS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "norm", "lm_head")


def orthogonalized_model(fn: Callable, model=None, direction: Tensor | None = None,
                         prompts: list[str] | None = None) -> None:
    """Check `fn(hf_model, direction, project)`: a copy of the Hugging Face model with the direction projected out of
    every matrix and bias that writes into the residual stream (embedding, attention and MLP outputs), the
    unembedding untied and unchanged, the original untouched. First on a tiny random Llama with biases and tied
    embeddings (parameter by parameter against `evaluation.orthogonalized_copy`), then, with a model, its logits
    against the ablation hooks."""
    import copy

    from helpers.evaluation import orthogonalized_copy, project_out_of_weight

    name = "orthogonalized_model"
    hf = tiny_llama()
    before = copy.deepcopy(hf.state_dict())
    r = torch.randn(hf.config.hidden_size, generator=_generator(3))
    layout = (("shapes cannot be multiplied", "the embedding is [vocab, d_model] (rows are tokens) while project "
                                              "takes [d_model, d_in]: project its transpose, project(W_E.T, r).T."),)
    got = _call(name, fn, hf, r.clone(), project_out_of_weight, errors=layout)
    if got is None:
        raise CheckFailed(f"{name} returned None: return the orthogonalized copy of the model.")
    if got is hf or any(not torch.equal(v, hf.state_dict()[k]) for k, v in before.items()):
        raise CheckFailed(f"{name} changed the model it was given: orthogonalize a copy (copy.deepcopy(hf_model)), "
                          "so that the notebook keeps the original for the hooks it compares with.")
    want = orthogonalized_copy(hf, r)
    want_params, got_params = dict(want.named_parameters(remove_duplicate=False)), dict(
        got.named_parameters(remove_duplicate=False))
    if set(got_params) != set(want_params):
        raise CheckFailed(f"{name} returned a model with other parameters than the one it was given: "
                          f"{sorted(set(got_params) ^ set(want_params))[:4]}.")
    wrong = [k for k, v in want_params.items() if got_params[k].shape != v.shape
             or not torch.allclose(got_params[k].detach(), v.detach(), rtol=1e-5, atol=1e-6)]
    if not wrong:
        stages = ["on a tiny random Llama with biases and tied embeddings"]
        if model is not None:
            from helpers.evaluation import orthogonalization_check

            if not prompts:
                raise ValueError("checks.orthogonalized_model with a model needs prompts=[...].")
            diff = orthogonalization_check(model, direction, prompts[:3],
                                           copy=lambda m, d, p: _call(name, fn, m, d, p))
            if diff > 1e-3:
                raise CheckFailed(f"{name}: on the model, your orthogonalized copy's logits differ from ablation's by "
                                  f"{diff:.2e} (relative); it passed on the tiny model, so check dtype and device.")
            _log_tolerance(name, "orthogonalized model vs ablation, relative logits", diff, 1e-3)
            stages.append(f"on the model (logits equal ablation's to {diff:.0e})")
        _passed(name, stages)
        return
    original = dict(hf.named_parameters(remove_duplicate=False))
    unchanged = [k for k in wrong if torch.equal(got_params[k].detach(), original[k].detach())]
    if "lm_head.weight" in wrong:
        raise CheckFailed(f"{name}: the unembedding (lm_head) changed: this model ties it to the embedding, so "
                          "orthogonalizing the embedding in place changed it too. Untie it first (lm_head.weight = "
                          "nn.Parameter(embedding weight clone)): it reads from the residual stream, it does not write.")
    readers = [k for k in wrong if any(f".{m}" in k or k.startswith(m) for m in _READERS)]
    if readers:
        raise CheckFailed(f"{name}: {readers[0]} changed, but it reads from the residual stream (queries, keys, "
                          "values, the MLP's input projections and the norms do): only what writes into it changes.")
    for k in unchanged:
        hint = next((h for part, h in _UNCHANGED_HINTS if part in k), None)
        if hint:
            layers = sorted({k2.split(".")[2] for k2 in unchanged if ".layers." in k2})
            some = f" (layers {', '.join(layers)} of {hf.config.num_hidden_layers})" if ".layers." in k and len(
                layers) < hf.config.num_hidden_layers else ""
            raise CheckFailed(f"{name}: {hint}{some}")
    if any("embed_tokens" in k for k in wrong):
        raise CheckFailed(f"{name}: the embedding is [vocab, d_model] (rows are tokens): project its transpose, "
                          "project(W_E.T, r).T, so that each token's vector loses its r̂ component.")
    raise CheckFailed(f"{name} differs from the reference on a tiny random Llama: {len(wrong)} parameters differ, "
                      f"first {wrong[0]}.")


def addition_hooks(fn: Callable[[Tensor, int, float], list], model=None, direction: Tensor | None = None,
                   layer: int | None = None, prompts: list[str] | None = None) -> None:
    """Check `fn(vector, layer, coeff)` -> fwd_hooks that add coeff · vector (r itself, not normalised) to
    `blocks.{layer}.hook_resid_pre` at every position, and nowhere else."""
    name = "addition_hooks"
    g = _generator(3)
    r = 5 * torch.randn(8, generator=g)
    hooks = _run(name, fn, r, 1, 1.5)
    names = _hook_names(hooks)
    if names != ["blocks.1.hook_resid_pre"]:
        if len(names) > 1:
            raise CheckFailed(f"add r at one layer only (blocks.{{layer}}.hook_resid_pre); yours hooks {names[:4]}"
                              f"{' ...' if len(names) > 4 else ''}.")
        raise CheckFailed(f"hook blocks.{{layer}}.hook_resid_pre (here blocks.1.hook_resid_pre); yours hooks {names}.")
    acts = 3 * torch.randn(2, 5, 8, generator=g)
    want = acts + 1.5 * r
    last_only = acts.clone()
    last_only[:, -1] += 1.5 * r
    mistakes = [
        Mistake("the vector was normalised: add coeff · r itself, whose norm is the harmful/harmless gap.",
                lambda: acts + 1.5 * r / r.norm()),
        Mistake("the sign is flipped: addition adds +coeff · r.", lambda: acts - 1.5 * r),
        Mistake("only the last position is steered: add at every position.", lambda: last_only),
        Mistake("coeff is ignored: add coeff · r.", lambda: acts + r),
        Mistake("only the first position is steered: add at every position.",
                lambda: torch.cat([acts[:, :1] + 1.5 * r, acts[:, 1:]], dim=1)),
    ]
    _compare(name, _apply_hooks(hooks, acts)["blocks.1.hook_resid_pre"], want, mistakes,
             "on random activations [2, 5, 8]", rtol=1e-5)
    stages = ["on random tensors"]
    if model is not None:
        _model_logits_match(name, model, hooks=_run(name, fn, direction, layer, 1.0),
                            reference=Intervention(add=direction, add_layer=layer), prompts=prompts)
        stages.append("on the model")
    _passed(name, stages)


# -- 04 · the direction in an SAE's latents -----------------------------------------------------------------------

def random_sae(d_in: int = 16, d_sae: int = 64, seed: int = 0):
    """A small sae_lens StandardSAE with random weights (non-unit decoder rows, a non-zero b_dec), for checks."""
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu"))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
        sae.W_dec.mul_(torch.rand(d_sae, 1, generator=_generator(seed)) * 3 + 0.2)
    return sae


def reconstruction(fn: Callable, sae=None, harmful: Tensor | None = None, harmless: Tensor | None = None) -> None:
    """Check `fn(sae, harmful_acts, harmless_acts)` -> (cosine, relative MSE) of r̂ = mean SAE(harmful) − mean
    SAE(harmless) against r = mean harmful − mean harmless (acts `[n, d_model]`; Kissane et al.'s metric)."""
    from helpers import decomposition as dec

    name = "reconstruction"
    small = random_sae()
    g = _generator(4)
    h = torch.randn(20, 16, generator=g) + 0.8
    hl = torch.randn(24, 16, generator=g)

    def reference(s, a, b):
        f = dec.faithfulness(a, b, dec.reconstruct(s, a), dec.reconstruct(s, b))
        return torch.tensor([f["cosine"], f["relative_mse"]], dtype=torch.float64)

    def wrong(r_hat_of):
        r = h.double().mean(0) - hl.double().mean(0)
        r_hat = r_hat_of(r).double()
        return torch.tensor([dec.cosine(r_hat, r), dec.relative_mse(r_hat, r)], dtype=torch.float64)

    rec = lambda x: dec.reconstruct(small, x)  # noqa: E731
    mistakes = [
        Mistake("you passed r itself through the SAE: reconstruct each prompt's activation, then take the difference "
                "of the means of the reconstructions (the SAE is not linear: b_dec and the ReLU).",
                lambda: wrong(lambda r: rec(r[None].float())[0])),
        Mistake("only the harmful side is reconstructed: r̂ = mean SAE(harmful) − mean SAE(harmless).",
                lambda: wrong(lambda r: rec(h).double().mean(0) - hl.double().mean(0))),
        Mistake("the relative MSE is divided by ‖r̂‖²; divide ‖r̂ − r‖² by ‖r‖² (the true direction's size).",
                lambda: _swap_mse_norm(h, hl, rec)),
        Mistake("only the harmless side is reconstructed: r̂ = mean SAE(harmful) − mean SAE(harmless).",
                lambda: wrong(lambda r: h.double().mean(0) - rec(hl).double().mean(0))),
        Mistake("the sign of r̂ is flipped: mean SAE(harmful) − mean SAE(harmless).",
                lambda: wrong(lambda r: rec(hl).double().mean(0) - rec(h).double().mean(0))),
    ]
    full = reference(small, h, hl)
    r_true = h.double().mean(0) - hl.double().mean(0)
    r_rec = rec(h).double().mean(0) - rec(hl).double().mean(0)
    mistakes += [
        Mistake("the MSE is not relative: divide ‖r̂ − r‖² by ‖r‖².",
                lambda: torch.tensor([full[0], (r_rec - r_true).pow(2).sum()], dtype=torch.float64)),
        Mistake("use squared norms: ‖r̂ − r‖² / ‖r‖², not ‖r̂ − r‖ / ‖r‖.",
                lambda: torch.tensor([full[0], full[1].sqrt()], dtype=torch.float64)),
        Mistake("the pair is (cosine, relative MSE), in that order.", lambda: full.flip(0)),
        Mistake("divide the dot product by both norms: cosine = r̂·r / (‖r̂‖ ‖r‖).",
                lambda: torch.tensor([r_rec @ r_true, full[1]], dtype=torch.float64)),
    ]
    decode_hint = ((f"({small.cfg.d_sae})", "encode without decode? r̂ lives in the model's space: average "
                    "sae.decode(sae.encode(x)), not the latents."),)
    got = _run(name, fn, small, h, hl, errors=decode_hint)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise CheckFailed(f"{name} should return a pair (cosine, relative_mse), got {type(got).__name__}.")
    _compare(name, torch.tensor([float(got[0]), float(got[1])], dtype=torch.float64), reference(small, h, hl),
             mistakes, "with a random SAE (d_in 16, 64 latents)", rtol=1e-4)
    stages = ["on a random SAE"]
    if sae is not None:
        got = _run(name, fn, sae, harmful, harmless)
        _compare(name, torch.tensor([float(got[0]), float(got[1])], dtype=torch.float64),
                 reference(sae, harmful, harmless), [], "on the SAE and the model's activations", rtol=1e-3)
        stages.append("on the SAE")
    _passed(name, stages)


def _swap_mse_norm(h: Tensor, hl: Tensor, rec) -> Tensor:
    from helpers import decomposition as dec

    r = h.double().mean(0) - hl.double().mean(0)
    r_hat = rec(h).double().mean(0) - rec(hl).double().mean(0)
    return torch.tensor([dec.cosine(r_hat, r), ((r_hat - r).pow(2).sum() / r_hat.pow(2).sum()).item()],
                        dtype=torch.float64)


def max_cosine_latent(fn: Callable[[Tensor, Tensor], tuple], sae=None, r: Tensor | None = None) -> None:
    """Check `fn(W_dec, r)` -> (latent index, its cosine): the latent whose decoder row (`W_dec` `[d_sae, d]`,
    rows of any norm) has the largest cosine with r."""
    name = "max_cosine_latent"
    g = _generator(5)
    d = 16
    r_small = torch.randn(d, generator=g) * 3
    W = torch.randn(40, d, generator=g)
    u = r_small / r_small.norm()
    W[7] = 0.9 * u + 0.1 * torch.randn(d, generator=g)  # the closest direction, short row
    W[19] = 10 * (0.5 * u + torch.randn(d, generator=g) / d ** 0.5)  # long row, larger dot product, smaller cosine
    W[23] = -0.97 * u * 2  # most anti-aligned: largest |cosine|
    unit = W / W.norm(dim=-1, keepdim=True)

    def pick(scores: Tensor, norm: Tensor) -> Tensor:
        i = int(scores.argmax())
        return torch.tensor([float(i), float(scores[i] / norm)], dtype=torch.float64)

    want = pick(unit @ r_small, r_small.norm())
    mistakes = [
        Mistake("decoder rows are not normalised: a long row wins on the dot product; divide each row by its norm.",
                lambda: pick(W @ r_small, r_small.norm() * W[int((W @ r_small).argmax())].norm())),
        Mistake("you ranked by |cosine|: the latent should point *towards* r (a large negative cosine is the "
                "opposite feature).", lambda: pick((unit @ r_small).abs(), r_small.norm())),
        Mistake("the cosine is not divided by ‖r‖.", lambda: pick(unit @ r_small, torch.tensor(1.0))),
        Mistake("that is the argmin: the latent with the largest cosine points towards r.",
                lambda: torch.tensor([float((unit @ r_small).argmin()), float((unit @ r_small).min() / r_small.norm())],
                                     dtype=torch.float64)),
        Mistake("the pair is (latent index, cosine), in that order.", lambda: want.flip(0)),
    ]
    rows_hint = "W_dec is [d_sae, d_model], one row per latent: score W_dec @ r (rows), not W_dec.T."
    d_sae, d_model = W.shape
    rows = ((f"{d_model}x{d_sae}", rows_hint), (f"({d_sae})", rows_hint))
    got = _run(name, fn, W.clone(), r_small, errors=rows)
    _compare(name, _pair(name, got), want, mistakes, "on a random decoder [40, 16]", rtol=1e-5)
    stages = ["on a random decoder"]
    if sae is not None and r is not None:
        from helpers.decomposition import unit_decoder

        cos = unit_decoder(sae) @ (r.float().cpu() / r.float().cpu().norm())
        _compare(name, _pair(name, _run(name, fn, sae.W_dec.detach().float().cpu(), r.float().cpu())),
                 torch.tensor([float(cos.argmax()), float(cos.max())], dtype=torch.float64), [], "on the SAE", rtol=1e-4)
        stages.append("on the SAE")
    _passed(name, stages)


def _scalar(name: str, got) -> Tensor:
    """A learner's number as a float64 0-d tensor (a tensor of another shape or a half-precision one is kept, so
    `_compare` names the problem)."""
    if isinstance(got, Tensor) and (got.dim() > 0 or got.dtype in (torch.float16, torch.bfloat16)):
        return got.detach()
    if isinstance(got, (Tensor, int, float)):
        return torch.tensor(float(got), dtype=torch.float64)
    return got


def _pair(name: str, got) -> Tensor:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise CheckFailed(f"{name} should return a pair (latent index, cosine), got {type(got).__name__}.")
    return torch.tensor([float(got[0]), float(got[1])], dtype=torch.float64)


def least_squares(fn: Callable[[Tensor, Tensor], float], sae=None, r: Tensor | None = None,
                  latents: list[int] | None = None) -> None:
    """Check `fn(atoms, target)` -> relative MSE ‖Σ cᵢ atomᵢ − target‖² / ‖target‖² of the best coefficients
    (a joint least-squares fit; `atoms` `[k, d]`, e.g. the decoder rows of the top-k latents)."""
    from helpers.decomposition import least_squares_relative_mse

    name = "least_squares"
    g = _generator(6)
    base = torch.randn(3, 16, generator=g)
    atoms = base + 0.8 * base[[1, 2, 0]]  # correlated atoms: separate projections are not the joint fit
    target = 0.5 * torch.randn(16, generator=g) + 2 * atoms[0] + atoms[1] - atoms[2]
    want = torch.tensor(least_squares_relative_mse(atoms, target), dtype=torch.float64)

    def separately() -> Tensor:
        fit = sum((target @ a) / (a @ a) * a for a in atoms)
        return torch.tensor(((fit - target).pow(2).sum() / target.pow(2).sum()).item(), dtype=torch.float64)

    def best_single() -> Tensor:
        errs = [1 - (target @ a).pow(2) / ((a @ a) * (target @ target)) for a in atoms]
        return torch.tensor(float(min(errs)), dtype=torch.float64)

    def unnormalised() -> Tensor:
        return want * target.double().pow(2).sum()

    mistakes = [
        Mistake("the atoms were fitted one at a time (sum of separate projections): solve for all coefficients "
                "jointly, e.g. torch.linalg.lstsq(atoms.T, target).", separately),
        Mistake("that is the best single atom's error: fit all k atoms together.", best_single),
        Mistake("the error is not relative: divide ‖fit − target‖² by ‖target‖².", unnormalised),
        Mistake("use squared norms: ‖fit − target‖² / ‖target‖², not their norms' ratio.", lambda: want.sqrt()),
        Mistake("that is the explained fraction (1 − error): return the relative error itself.", lambda: 1 - want),
        Mistake("the error is relative to the fit: divide by ‖target‖², the size of what is fitted.",
                lambda: want / (1 - want)),
    ]
    layout = (("shapes", "atoms is [k, d] (one atom per row): solve atomsᵀ c = target, e.g. "
                         "torch.linalg.lstsq(atoms.T, target[:, None])."),
              ("size", "atoms is [k, d] (one atom per row): solve atomsᵀ c = target, e.g. "
                       "torch.linalg.lstsq(atoms.T, target[:, None])."))
    got = _scalar(name, _run(name, fn, atoms.clone(), target.clone(), errors=layout))
    _compare(name, got, want, mistakes, "on 3 correlated random atoms", rtol=1e-4)
    stages = ["on random atoms"]
    if sae is not None and r is not None and latents:
        rows = sae.W_dec.detach().float().cpu()[torch.tensor(latents)]
        _compare(name, torch.tensor(float(_run(name, fn, rows, r.float().cpu())), dtype=torch.float64),
                 torch.tensor(least_squares_relative_mse(rows, r.float().cpu()), dtype=torch.float64), [],
                 f"on the SAE's top {len(latents)} latents", rtol=1e-3)
        stages.append("on the SAE")
    _passed(name, stages)


def top_k_curve(fn: Callable, sae=None, r: Tensor | None = None, delta: Tensor | None = None,
                ks: list[int] | None = None) -> None:
    """Check `fn(W_dec, r, delta, ks, fit)` -> [relative MSE for each k]: the top-k latents by |Δ activation| (largest
    first), their unit decoder rows fitted to r jointly by `fit` (helpers' exact least squares here)."""
    from helpers.decomposition import least_squares_relative_mse as fit

    name = "top_k_curve"
    g = _generator(13)
    W = torch.randn(40, 16, generator=g) * (torch.rand(40, 1, generator=g) * 3 + 0.2)
    target = torch.randn(16, generator=g) + 0.8 * W[:6].sum(0) / W[:6].norm(dim=-1).mean()
    dl = torch.randn(40, generator=g) * torch.linspace(2, 0.2, 40)  # mixed signs; the large |Δ| among rows 0-5
    small_ks = [1, 2, 4, 8, 16]
    unit = W / W.norm(dim=-1, keepdim=True)

    def curve(order: Tensor, shift: int = 0, rows: Tensor = unit) -> Tensor:
        return torch.tensor([fit(rows[order[:max(k + shift, 0)]], target) for k in small_ks], dtype=torch.float64)

    order = dl.abs().argsort(descending=True)
    want = curve(order)
    mistakes = [
        Mistake("ranked by the signed Δ: rank by |Δ| (a latent firing much less on harmful prompts carries r too).",
                lambda: curve(dl.argsort(descending=True))),
        Mistake("those are the k latents with the smallest |Δ|: sort descending.", lambda: curve(dl.abs().argsort())),
        Mistake("ranked by decoder cosine with r: this curve ranks by |Δ activation| (the cosine ranking is "
                "section 5's).", lambda: curve((unit @ (target / target.norm())).argsort(descending=True))),
        Mistake("ranked by |Δ|·‖d‖: that is Kissane et al.'s ranking (their folded decoder norms); this curve ranks "
                "by |Δ| alone.", lambda: curve((dl.abs() * W.norm(dim=-1)).argsort(descending=True))),
        Mistake("off by one: the fit for k uses k − 1 latents (order[:k] takes k).", lambda: curve(order, -1)),
        Mistake("off by one: the fit for k uses k + 1 latents (order[:k] takes k).", lambda: curve(order, 1)),
        Mistake("the latents were taken in index order, not ranked: sort by |Δ| first.",
                lambda: curve(torch.arange(len(dl)))),
        Mistake("that is the best single latent among the top k: fit all k jointly (call fit on the k rows).",
                lambda: torch.tensor([min(fit(unit[order[i:i + 1]], target) for i in range(k)) for k in small_ks],
                                     dtype=torch.float64)),
    ]
    layout = "fit takes atoms [k, d_model], one decoder row per latent: pass W_dec[top_k], not its transpose."
    errors = (("shapes cannot be multiplied", layout), ("should match other.size", layout))
    got = _run(name, fn, W.clone(), target.clone(), dl.clone(), list(small_ks), fit, errors=errors)
    if isinstance(got, Tensor):
        got = got.tolist()
    if not isinstance(got, (list, tuple)) or len(got) != len(small_ks):
        raise CheckFailed(f"{name} should return one relative MSE per k ({len(small_ks)} for ks={small_ks}), got "
                          f"{got if not isinstance(got, (list, tuple)) else f'{len(got)} values'}.")
    _compare(name, torch.tensor([float(v) for v in got], dtype=torch.float64), want, mistakes,
             f"on a random decoder [40, 16] (ks={small_ks})", rtol=1e-5)
    stages = ["on a random decoder"]
    if sae is not None and r is not None and delta is not None:
        from helpers.decomposition import unit_decoder

        ks = ks or small_ks
        unit_sae = unit_decoder(sae)
        order_sae = delta.detach().float().cpu().abs().argsort(descending=True)
        ref = torch.tensor([fit(unit_sae[order_sae[:k]], r.float().cpu()) for k in ks], dtype=torch.float64)
        got = _run(name, fn, sae.W_dec.detach().float().cpu(), r.float().cpu(), delta.detach().float().cpu(), ks, fit)
        _compare(name, torch.tensor([float(v) for v in got], dtype=torch.float64), ref, [],
                 f"on the SAE (ks={ks})", rtol=1e-3)
        stages.append("on the SAE")
    _passed(name, stages)


# -- 05 · steering with a latent ---------------------------------------------------------------------------------

def latent_interventions(fn: Callable, sae=None, layer: int | None = None, norm: float | None = None) -> None:
    """Check `fn(sae, latent, layer, norm)` -> (ablation, addition): `Intervention(ablate=d̂)` projecting the
    latent's unit decoder row out everywhere, and `Intervention(add=norm · d̂, add_layer=layer)`."""
    from helpers import steering

    name = "latent_interventions"
    cases = [(random_sae(), 5, 2, 3.0)]
    if sae is not None:
        cases.append((sae, int(sae.W_dec.detach().norm(dim=-1).argmax()), layer, norm))
    for s, latent, L, nrm in cases:
        got = _run(name, fn, s, latent, L, nrm)
        if not isinstance(got, (tuple, list)) or len(got) != 2 or not all(isinstance(x, Intervention) for x in got):
            raise CheckFailed(f"{name} should return two helpers.hooks.Intervention objects: (ablation, addition).")
        ablation, addition = got
        want_ablate = steering.latent_ablation(s, [latent]).ablate
        want_add = steering.latent_addition(s, latent, L, nrm)
        if ablation.ablate is None or addition.add is None:
            raise CheckFailed(f"{name}: the first Intervention needs ablate=, the second add= and add_layer=.")
        def stray(iv: Intervention, others: tuple[str, ...]) -> list[str]:  # fields this Intervention should not set
            return [f for f in others if getattr(iv, f) is not None] + (["prompt_only"] if iv.prompt_only else [])

        extra = {"the ablation": stray(ablation, ("add", "edit")), "the addition": stray(addition, ("ablate", "edit"))}
        for which, fields in extra.items():
            if fields:
                raise CheckFailed(f"{name}: {which} also sets {', '.join(f'{f}=' for f in fields)}: each Intervention "
                                  "does one thing here (ablation everywhere; addition at every position, prompt and "
                                  "generated tokens alike), so leave the other fields at their defaults.")
        if addition.add_layer != L:
            raise CheckFailed(f"{name}: add at the SAE's layer (add_layer={L}), not {addition.add_layer}.")
        a = ablation.ablate.detach().float().cpu().flatten()
        cos = float(a @ want_ablate / (a.norm() * want_ablate.norm()))
        W_enc = s.W_enc.detach().float().cpu()[:, latent]
        if abs(float(a @ W_enc / (a.norm() * W_enc.norm()))) > 0.999 and abs(cos) < 0.999:
            raise CheckFailed(f"{name}: that is the encoder's column; steer with the decoder row W_dec[latent], "
                              "what the latent writes into the residual stream.")
        if abs(cos) < 0.999:
            raise CheckFailed(f"{name}: the ablation direction is not latent {latent}'s decoder row (cosine {cos:.3f}).")
        mistakes = [
            Mistake("the added vector is not normalised: scale the *unit* decoder row to `norm` (decoder rows have "
                    "their own norms).", lambda: s.W_dec.detach().float().cpu()[latent] * nrm),
            Mistake("the added vector points the wrong way: +norm · d̂.", lambda: -want_add.add),
            Mistake("`norm` is ignored: add norm · d̂.", lambda: want_add.add / nrm),
        ]
        # what is added is coeff · add: a unit row with coeff=norm is as right as norm · d̂ with coeff 1
        added = addition.add.detach().float().cpu() * float(addition.coeff)
        _compare(name, added, want_add.add, mistakes, f"(latent {latent}; coeff · add)", rtol=1e-4)
    _passed(name, ["on a random SAE"] + (["on the SAE"] if sae is not None else []))


def clamp_edit(fn: Callable, sae=None, x: Tensor | None = None, latent: int | None = None,
               value: float | None = None) -> None:
    """Check `fn(sae, latent, value)` -> edit: a function of the residual `[batch, pos, d_model]` returning
    x + decode(f′) − decode(f), f = sae.encode(x) and f′ = f with `latent` set to `value` at every position (the SAE
    spliced in with its error term, as `steering.sae_clamp`)."""
    from helpers.steering import sae_clamp

    name = "clamp_edit"
    small = random_sae(seed=5)
    g = _generator(5)
    xs = torch.randn(2, 3, small.cfg.d_in, generator=g) * 2
    with torch.no_grad():
        f = small.encode(xs)
    k = int(f.reshape(-1, f.shape[-1]).amax(0).argmax())  # a latent that fires on these inputs
    v = 2.5 * f[..., k].max().item()
    want = sae_clamp(small, [k], v)(xs).double()
    W = small.W_dec.detach()

    def spliced(f2: Tensor) -> Tensor:
        with torch.no_grad():
            return (xs + small.decode(f2) - small.decode(f)).double()

    def set_(k2, val, where=slice(None)) -> Tensor:
        f2 = f.clone()
        f2[:, where, k2] = val
        return f2

    mistakes = [
        Mistake("the error term is missing: that is decode(f′), the SAE's reconstruction in place of the residual; "
                "return x + decode(f′) − decode(f).", lambda: small.decode(set_(k, v)).detach().double()),
        Mistake("you added decode(f′) to x without subtracting decode(f): return x + decode(f′) − decode(f).",
                lambda: (xs + small.decode(set_(k, v))).detach().double()),
        Mistake("that adds value·W_dec[latent] without removing what the latent already wrote (f·W_dec[latent]): "
                "clamping *sets* the activation.", lambda: (xs + v * W[k]).double()),
        Mistake("the decoder row was normalised: the latent writes f · W_dec[latent], its own row; use the SAE's "
                "decode.", lambda: (xs + (v - f[..., k, None]) * W[k] / W[k].norm()).detach().double()),
        Mistake("x came back unchanged: did you set the latent in f itself, so that f′ and f are one tensor? Clone f "
                "before setting the latent (f2 = f.clone()).", lambda: xs.double()),
        Mistake("every latent was set to the value: clamp only `latent` (f2[..., latent] = value).",
                lambda: spliced(torch.full_like(f, v))),
        Mistake("only the last position was clamped: the edit sees every position's residual; clamp them all.",
                lambda: spliced(set_(k, v, slice(-1, None)))),
        Mistake("a neighbouring latent was clamped (off by one): index the latent itself.",
                lambda: spliced(set_((k + 1) % f.shape[-1], v))),
        Mistake("the latent was clamped to 0, not to `value`.", lambda: spliced(set_(k, 0.0))),
    ]
    edit = _run(name, fn, small, k, v)
    if not callable(edit):
        raise CheckFailed(f"{name} should return a function of the residual (the edit), got {type(edit).__name__}.")
    got = _run(name, edit, xs.clone())
    _compare(name, _as_tensor(name, got, want).detach().double(), want, mistakes,
             f"on a random SAE (d_in 16, 64 latents) and residual [2, 3, 16], latent {k} set to {v:.2f}", rtol=1e-4)
    stages = ["on a random SAE"]
    if sae is not None and x is not None and latent is not None and value is not None:
        ref = sae_clamp(sae, [latent], value)(x).detach().double().cpu()
        got = _run(name, _run(name, fn, sae, latent, value), x.clone())
        _compare(name, _as_tensor(name, got, ref).detach().double().cpu(), ref, [], f"on the SAE (latent {latent})",
                 rtol=1e-3, scale=x.double().norm().item())
        stages.append("on the SAE")
    _passed(name, stages)


# -- 06 · the refusal gradient -----------------------------------------------------------------------------------

def _causal_map(d: int, seed: int = 7) -> Callable[[Tensor], Tensor]:
    """A small causal map [T, d] -> [T, d] (each position mixes itself and the running mean before it)."""
    g = _generator(seed)
    A, B = torch.randn(d, d, generator=g) / d ** 0.5, torch.randn(d, d, generator=g) / d ** 0.5

    def forward(x: Tensor) -> Tensor:
        running = x.cumsum(0) / torch.arange(1, len(x) + 1, dtype=x.dtype)[:, None]
        return x + torch.tanh(x @ A + running @ B)

    return forward


def projection_gradient(fn: Callable, model=None, instruction: str | None = None, source_layer: int | None = None,
                        target_layer: int | None = None, r_target: Tensor | None = None) -> None:
    """Check `fn(forward, resid, direction)` -> ∇ R `[T, d]` with respect to `resid` `[T, d]`, where
    R = r̂ · forward(resid)[-1]: the last token's target-layer residual projected on the *unit* direction."""
    from helpers import gradients as grads

    name = "projection_gradient"
    g = _generator(8)
    forward = _causal_map(8)
    x = torch.randn(6, 8, generator=g)
    r = 4 * torch.randn(8, generator=g)
    want, _ = grads.projection_gradient(forward, x, r)

    def grad_of(read: Callable[[Tensor], Tensor]) -> Tensor:
        xx = x.clone().requires_grad_(True)
        with torch.enable_grad():
            (out,) = torch.autograd.grad(read(forward(xx)), xx)
        return out

    mistakes = [
        Mistake("r is not normalised: R projects on r̂ = r/‖r‖ (your gradient is ‖r‖ times too large).",
                lambda: grad_of(lambda y: y[-1] @ r)),
        Mistake("R reads every position: it is the projection of the *last* token only (the one that predicts "
                "the reply).", lambda: grad_of(lambda y: (y @ (r / r.norm())).sum())),
        Mistake("the sign is flipped: the gradient of +R.", lambda: -want),
        Mistake("that is the gradient of the first position's projection: use forward(resid)[-1].",
                lambda: grad_of(lambda y: y[0] @ (r / r.norm()))),
        Mistake("r is divided by ‖r‖²: R projects on r̂ = r/‖r‖ (divide once).",
                lambda: grad_of(lambda y: y[-1] @ r / (r @ r))),
    ]
    grad_hint = (("does not require grad", "the input needs requires_grad: x = resid.detach().clone()"
                  ".requires_grad_(True), then R.backward() and return x.grad."),)
    got = _run(name, fn, forward, x.clone(), r.clone(), errors=grad_hint)
    _compare(name, got, want, mistakes, "on a random causal map (6 positions, d 8)", rtol=1e-4)
    stages = ["on a random map"]
    if model is not None:
        source, fwd = grads.layer_map(model, instruction, source_layer, target_layer)
        ref = grads.refusal_gradient(model, instruction, source_layer, target_layer, r_target).grad
        _compare(name, _run(name, fn, fwd, source, r_target.to(model.device)).detach().float().cpu(), ref, [],
                 f"on the model (layers {source_layer} → {target_layer})", rtol=1e-3)
        stages.append("on the model")
    _passed(name, stages)


def layer_map(fn: Callable, model, instruction: str, source_layer: int, target_layer: int) -> None:
    """Check `fn(tl, ids, source_layer, target_layer)` -> (source `[T, d_model]`, forward): the prompt's residual at
    `blocks.{source_layer}.hook_resid_pre`, and a differentiable function sending any such residual to
    `blocks.{target_layer}.hook_resid_pre` `[T, d_model]` with the tokens fixed, against `gradients.layer_map`."""
    from helpers import gradients as grads

    name = "layer_map"
    tl = model.tl
    ids = model.tokenize_instructions([instruction])["input_ids"].to(model.device)
    ref_source, ref_forward = grads.layer_map(model, instruction, source_layer, target_layer)
    got = _run(name, fn, tl, ids.clone(), source_layer, target_layer)
    if not isinstance(got, (tuple, list)) or len(got) != 2 or not callable(got[1]):
        raise CheckFailed(f"{name} should return a pair (source residual [T, d_model], forward function), got "
                          f"{type(got).__name__}.")
    source, forward = got

    def resid(layer: int) -> Tensor:
        with torch.no_grad():
            return tl(ids, stop_at_layer=layer)[0].float().cpu()

    if isinstance(source, Tensor) and source.dim() == 3 and source.shape[0] == 1:
        raise CheckFailed(f"{name}: the source residual has a batch dimension {tuple(source.shape)}: return the "
                          "prompt's [T, d_model] (index [0]).")
    where = f"source residual (layer {source_layer})"
    source_mistakes = [
        Mistake(f"the source residual is read one layer early: stop_at_layer={source_layer} returns "
                f"blocks.{source_layer}.hook_resid_pre.", lambda: resid(source_layer - 1)),
        Mistake(f"the source residual is read one layer late (that is blocks.{source_layer}.hook_resid_post): "
                f"stop_at_layer={source_layer}.", lambda: resid(source_layer + 1)),
    ]
    _compare(name, _as_tensor(name, source, ref_source).detach().float().cpu(), ref_source.float().cpu(),
             source_mistakes, f"for the {where}", rtol=1e-4)

    g = _generator(11)
    noise = torch.randn(ref_source.shape, generator=g) * ref_source.float().cpu().norm(dim=-1, keepdim=True) * 0.05
    x = (ref_source.float().cpu() + noise).to(ref_source.device, ref_source.dtype)

    def hooked(edit: Callable[[Tensor], Tensor], hook_name: str, stop: int) -> Tensor:
        with torch.no_grad(), tl.hooks(fwd_hooks=[(hook_name, lambda acts, hook: edit(acts))]):
            return tl(ids, stop_at_layer=stop)[0].float().cpu()

    at = f"blocks.{source_layer}.hook_resid_pre"
    forward_mistakes = [
        Mistake("forward ignores its input: replace the source residual by x in a hook on "
                f"{at} (return x[None] from the hook).", lambda: resid(target_layer)),
        Mistake(f"forward runs one layer too far: stop_at_layer={target_layer} returns "
                f"blocks.{target_layer}.hook_resid_pre.", lambda: hooked(lambda a: x[None].to(a), at, target_layer + 1)),
        Mistake(f"forward stops one layer early: stop_at_layer={target_layer}.",
                lambda: hooked(lambda a: x[None].to(a), at, target_layer - 1)),
        Mistake("the hook adds x to the residual: it should replace it (return x[None]).",
                lambda: hooked(lambda a: a + x[None].to(a), at, target_layer)),
        Mistake(f"x replaces the residual after layer {source_layer} (hook_resid_post): the source is "
                f"{at}, the input of layer {source_layer}.",
                lambda: hooked(lambda a: x[None].to(a), f"blocks.{source_layer}.hook_resid_post", target_layer)),
        Mistake("only the last position takes x: replace the residual at every position (each token can push R).",
                lambda: hooked(lambda a: torch.cat([a[:, :-1], x[None, -1:].to(a)], 1), at, target_layer)),
    ]
    with torch.no_grad():
        want = ref_forward(x).float().cpu()
    y = _run(name, forward, x.clone())
    if isinstance(y, Tensor) and y.dim() == 3 and y.shape[0] == 1:
        raise CheckFailed(f"{name}: forward returns a batch dimension {tuple(y.shape)}: return [T, d_model] "
                          "(index [0]).")
    _compare(name, _as_tensor(name, y, want).detach().float().cpu(), want, forward_mistakes,
             "for forward(source + noise)", rtol=1e-3)
    leaf = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = forward(leaf)
        if not isinstance(out, Tensor) or not out.requires_grad:
            raise CheckFailed(f"{name}: forward's output does not depend on x through autograd (a torch.no_grad() or "
                              ".detach() inside forward?): the gradient needs the graph from x to the target.")
    _passed(name, [f"on the model (layers {source_layer} → {target_layer}, forward and its gradient)"])


def latent_scores(fn: Callable[[Tensor, Tensor], Tensor], sae=None, gradient: Tensor | None = None) -> None:
    """Check `fn(W_dec, grad)` -> scores `[d_sae]`: the mean over prompt positions of each latent's *unit*
    decoder row · the gradient at that position (`grad` `[T, d]`; the post's plain reading)."""
    name = "latent_scores"
    g = _generator(9)
    W = torch.randn(30, 8, generator=g) * (torch.rand(30, 1, generator=g) * 3 + 0.2)
    grad = torch.randn(5, 8, generator=g)
    grad[-1] *= 4
    unit = W / W.norm(dim=-1, keepdim=True)
    want = (grad @ unit.T).mean(0)
    mistakes = [
        Mistake("decoder rows are not normalised: divide each row by its norm, or long rows win.",
                lambda: (grad @ W.T).mean(0)),
        Mistake("that is the last position only: average over every prompt position.", lambda: unit @ grad[-1]),
        Mistake("that is the sum over positions: the published reading takes the mean.", lambda: (grad @ unit.T).sum(0)),
        Mistake("the sign is flipped: score = d̂ₖ · g (positive = pushes towards refusal).", lambda: -want),
        Mistake("that is the first position only: average over every prompt position.", lambda: unit @ grad[0]),
        Mistake("absolute values were taken: the sign says whether a latent pushes towards refusal or away.",
                lambda: (grad @ unit.T).abs().mean(0)),
    ]
    _compare(name, _run(name, fn, W.clone(), grad.clone()), want, mistakes, "on a random decoder [30, 8]", rtol=1e-5,
             shape_hint="one score per latent: reduce over positions.")
    stages = ["on a random decoder"]
    if sae is not None and gradient is not None:
        from helpers.decomposition import unit_decoder

        ref = (gradient.double().cpu() @ unit_decoder(sae).double().T).mean(0)
        _compare(name, _run(name, fn, sae.W_dec.detach().float().cpu(), gradient.float().cpu()), ref, [],
                 "on the SAE and the model's gradient", rtol=1e-4)
        stages.append("on the SAE")
    _passed(name, stages)
