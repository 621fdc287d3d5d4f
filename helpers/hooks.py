"""Interventions on the residual stream.

An `Intervention` says *what* to do (directional or subspace ablation everywhere, activation
addition at one layer, and/or any edit of one layer's residual, e.g. an SAE spliced in with
clamped latents); `tl_hooks` turns it into TransformerLens `fwd_hooks`, the one implementation:
`LoadedModel.hooks(intervention)` adds them to the model's `TransformerBridge`, where they act on
every forward pass, including Hugging Face's KV-cached `generate`. They edit every position, so
they stay correct with a KV cache: each new token's residual is edited as it is computed, and
cached keys/values come from edited residuals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


def ablate_direction(acts: Tensor, direction: Tensor) -> Tensor:
    """Remove the component of `acts` (`[..., d_model]`) along `direction` (`[d_model]`, any norm), or along the
    span of the rows of `direction` (`[k, d_model]`, any norms; orthonormalised here)."""
    return project_out(acts, ablation_basis(direction))


def ablation_basis(ablate: Tensor) -> Tensor:
    """The orthonormal rows `[k, d_model]` an ablation projects out (k = 1 for a single direction)."""
    return (ablate / ablate.norm())[None] if ablate.dim() == 1 else orthonormal_rows(ablate)


def project_out(acts: Tensor, basis: Tensor) -> Tensor:
    """`acts` minus its component in the span of the orthonormal rows of `basis`."""
    basis = basis.to(acts.device, acts.dtype)
    if len(basis) == 1:
        return acts - (acts @ basis[0]).unsqueeze(-1) * basis[0]
    return acts - (acts @ basis.T) @ basis


def orthonormal_rows(vectors: Tensor) -> Tensor:
    """An orthonormal basis `[k, d]` of the span of `vectors` (`[k, d]`, linearly independent)."""
    q, r = torch.linalg.qr(vectors.double().T)
    diag = r.diagonal().abs()
    if bool((diag < 1e-6 * diag.max()).any()):
        raise ValueError(f"The {len(vectors)} ablation directions are linearly dependent; pass independent rows.")
    return q.T.to(vectors.dtype)


@dataclass(frozen=True)
class Intervention:
    """Directional ablation (every layer: resid_pre, attn_out, mlp_out), activation addition and/or an edit.

    `ablate`: direction `[d_model]` to project out everywhere, or the rows `[k, d_model]` of a subspace, or None.
    `add`: vector `[d_model]` added, times `coeff`, to `blocks.{add_layer}.hook_resid_pre`
    at every position (coeff=-1 is activation subtraction).
    `edit`: a function `[batch, pos, d_model] -> same` applied to `blocks.{edit_layer}.hook_resid_pre`
    (e.g. `helpers.steering.sae_clamp`: an SAE spliced in with the error term and clamped latents).
    `prompt_only`: apply `add` and `edit` only to the prompt's tokens, not to generated ones (during KV-cached
    generation each new token is a pass of length 1; those are left alone).
    """

    ablate: Tensor | None = None
    add: Tensor | None = None
    add_layer: int | None = None
    coeff: float = 1.0
    edit: Callable[[Tensor], Tensor] | None = None
    edit_layer: int | None = None
    prompt_only: bool = False

    def __post_init__(self) -> None:
        if (self.add is None) != (self.add_layer is None):
            raise ValueError("Activation addition needs both `add` (a vector) and `add_layer` (a layer index).")
        if (self.edit is None) != (self.edit_layer is None):
            raise ValueError("An edit needs both `edit` (a function of the residual) and `edit_layer` (a layer index).")
        if self.edit is not None and not callable(self.edit):
            raise TypeError(f"Intervention edit= must be a function of the residual stream, got {type(self.edit).__name__}.")
        for name in ("ablate", "add"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, Tensor):
                raise TypeError(f"Intervention {name}= must be a torch.Tensor of shape [d_model], got {type(v).__name__}.")
            if v is not None and not bool(torch.isfinite(v).all()):
                raise ValueError(f"Intervention {name}= holds NaN or infinite values; check the direction you passed.")
        if self.ablate is not None and self.ablate.dim() == 2:
            if len(self.ablate) == 0 or bool((self.ablate.norm(dim=-1) == 0).any()):
                raise ValueError("Intervention ablate= holds a zero row (or no rows): every row must be a direction.")
            orthonormal_rows(self.ablate)
        elif self.ablate is not None and float(self.ablate.norm()) == 0.0:
            raise ValueError("Intervention ablate= is the zero vector: there is no direction to project out.")
        if not isinstance(self.coeff, (int, float)) or self.coeff != self.coeff:
            raise ValueError(f"Intervention coeff must be a finite number, got {self.coeff!r}.")

    def check(self, d_model: int, n_layers: int) -> None:
        """Raise if the vectors are not `[d_model]` or the layer is out of range (called where it meets a model)."""
        for name in ("ablate", "add"):
            v = getattr(self, name)
            subspace = name == "ablate" and v is not None and v.dim() == 2 and v.shape[-1] == d_model
            if v is not None and tuple(v.shape) != (d_model,) and not subspace:
                raise ValueError(f"Intervention {name}= has shape {tuple(v.shape)}, but this model needs "
                                 f"[{d_model}] (d_model). Pass one direction, e.g. mean_diffs[pos, layer].")
        if self.add_layer is not None:
            check_layer(self.add_layer, n_layers, "add_layer")
        if self.edit_layer is not None:
            check_layer(self.edit_layer, n_layers, "edit_layer")


NO_INTERVENTION = Intervention()


def check_layer(layer: int, n_layers: int, what: str = "layer") -> int:
    """`layer` if it is an integer in 0..n_layers-1, else a ValueError naming the valid range."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"{what} {layer!r} is out of range for a model with {n_layers} layers (0..{n_layers - 1}).")
    return layer


def tl_hooks(intervention: Intervention, n_layers: int) -> list[tuple[str, Callable]]:
    """TransformerLens `fwd_hooks` implementing the intervention."""
    hooks: list[tuple[str, Callable]] = []
    if intervention.add_layer is not None:
        check_layer(intervention.add_layer, n_layers, "add_layer")
    if intervention.edit_layer is not None:
        check_layer(intervention.edit_layer, n_layers, "edit_layer")
    if intervention.ablate is not None:
        basis = ablation_basis(intervention.ablate)

        def ablate_hook(acts: Tensor, hook) -> Tensor:
            return project_out(acts, basis)

        for layer in range(n_layers):
            for name in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out"):
                hooks.append((f"blocks.{layer}.{name}", ablate_hook))
    prompt_only = intervention.prompt_only  # a pass of length 1 is a generated token (KV-cached generation)
    if intervention.add is not None:
        vector, coeff = intervention.add, intervention.coeff

        def add_hook(acts: Tensor, hook) -> Tensor:
            if prompt_only and acts.shape[1] == 1:
                return acts
            return acts + coeff * vector.to(acts.device, acts.dtype)

        hooks.append((f"blocks.{intervention.add_layer}.hook_resid_pre", add_hook))
    if intervention.edit is not None:
        edit = intervention.edit

        def edit_hook(acts: Tensor, hook) -> Tensor:
            return acts if prompt_only and acts.shape[1] == 1 else edit(acts)

        hooks.append((f"blocks.{intervention.edit_layer}.hook_resid_pre", edit_hook))
    return hooks
