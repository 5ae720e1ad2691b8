"""Run an MLP at a reduced hidden width by explicit weight slicing (eq. 16).

At width ratio s only the first k = floor(s * M) hidden channels run: the in-projection computes only
those rows, the out-projection reads only those columns. Slices are views of the weights a provider
hands in, never copies, so a host can pass cast, dequantized or LoRA-patched weights.

Layouts (M = MLP hidden channels, D = model width):
- plain:  in W1 [M, D] -> act -> out W2 [D, M]                     (Flux / Qwen-Image / SD3 double)
- gated:  in [gate M; up M] (one projection) or two projections,
          act(gate) * up -> out [D, M]                              (Flux2, Lumina, Z-Image)
- fused:  in [prefix P; mlp M] (Flux single: P = 3D for qkv), out reads [out_prefix; mlp M]
          (Flux single: out_prefix = D attention channels).
The result equals the full MLP with hidden channels >= k masked to zero (eq. 13).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# A weight provider: given the activation the layer is about to see, return (weight, bias) as the
# layer would use them (cast to the activation's device and dtype, patches applied).
WeightFn = Callable[[Tensor], tuple[Tensor, Optional[Tensor]]]


def quick_gelu(x: Tensor) -> Tensor:
    """x * sigmoid(1.702 x): the MLP activation of the authors' released Qwen-Image E-DiT (their
    `ApproximateGELU`), where ComfyUI's Qwen-Image runs tanh-GELU (1.3 % apart per forward)."""
    return x * torch.sigmoid(1.702 * x)


# MLP activations a router file may ask for by name (metadata `mlp_activation`); absent: the model's own.
MLP_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"quick_gelu": quick_gelu}


@dataclass(frozen=True)
class MLPLayout:
    hidden: int  # M
    gated: bool = False  # in-projection holds [gate M; up M] after its prefix
    in_prefix: int = 0  # rows of the in-projection before the MLP part (fused single: 3D)
    out_prefix: int = 0  # input channels of the out-projection before the MLP part (fused single: D)

    def __post_init__(self):
        if self.hidden <= 0 or self.in_prefix < 0 or self.out_prefix < 0:
            raise ValueError(f"bad MLP layout {self}")

    @property
    def in_rows(self) -> int:
        return self.in_prefix + self.hidden * (2 if self.gated else 1)

    def channels(self, ratio: float) -> int:
        """k = floor(ratio * M), at least 1 (the released code's H//4, 2H//4, 3H//4, H)."""
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"width ratio must lie in (0, 1], got {ratio}")
        return max(1, min(self.hidden, math.floor(ratio * self.hidden + 1e-9)))

    def in_row_ranges(self, k: int) -> list[tuple[int, int]]:
        """Row ranges of the in-projection that run at k channels, merged where contiguous."""
        p, m = self.in_prefix, self.hidden
        if not self.gated:
            return [(0, p + k)]
        return [(0, p + k), (p + m, p + m + k)] if k < m else [(0, p + 2 * m)]


def linear_rows(x: Tensor, w: Tensor, b: Tensor | None, ranges: list[tuple[int, int]]) -> Tensor:
    """F.linear over the given output rows only; x: [..., D] -> [..., sum of range lengths]."""
    outs = [F.linear(x, w[a:z], None if b is None else b[a:z]) for a, z in ranges]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


def linear_cols(h: Tensor, w: Tensor, b: Tensor | None, n: int) -> Tensor:
    """F.linear reading only the first n input channels; h: [..., >= n] -> [..., D_out]."""
    return F.linear(h[..., :n], w[:, :n], b)


def project_in(x: Tensor, w: Tensor, b: Tensor | None, layout: MLPLayout, k: int, pad: bool = False) -> Tensor:
    """The in-projection at k channels. x: [..., D].

    Compact result: [..., in_prefix + k] (gated: [..., in_prefix + 2k] as [prefix, gate_k, up_k]).
    pad=True returns the full width [..., in_rows] with the unused channels zero, for hosts whose
    block code splits the projection by fixed sizes.
    """
    y = linear_rows(x, w, b, layout.in_row_ranges(k))
    if not pad or y.shape[-1] == layout.in_rows:
        return y
    full = y.new_zeros(*y.shape[:-1], layout.in_rows)
    p, m = layout.in_prefix, layout.hidden
    full[..., : p + k] = y[..., : p + k]
    if layout.gated:
        full[..., p + m: p + m + k] = y[..., p + k:]
    return full


def project_out(h: Tensor, w: Tensor, b: Tensor | None, layout: MLPLayout, k: int) -> Tensor:
    """The out-projection reading out_prefix + k input channels. h: [..., >= out_prefix + k]."""
    return linear_cols(h, w, b, layout.out_prefix + k)


def _hidden(y: Tensor, act: Callable[[Tensor], Tensor], gated: bool) -> Tensor:
    if not gated:
        return act(y)
    gate, up = y.chunk(2, dim=-1)
    return act(gate) * up


def elastic_mlp(x: Tensor, fc_in: WeightFn, fc_out: WeightFn, act: Callable[[Tensor], Tensor],
                layout: MLPLayout, ratio: float = 1.0, fc_up: WeightFn | None = None) -> Tensor:
    """A stand-alone MLP (no prefix) at width ratio. x: [..., D] -> [..., D_out].

    fc_up: a separate up-projection for gated MLPs stored as two layers (w1 gate, w3 up).
    """
    if layout.in_prefix or layout.out_prefix:
        raise ValueError("elastic_mlp runs stand-alone MLPs; use project_in / project_out for fused layouts")
    k = layout.channels(ratio)
    w1, b1 = fc_in(x)
    if fc_up is not None:
        if not layout.gated:
            raise ValueError("a separate up-projection needs a gated layout")
        w3, b3 = fc_up(x)
        gate = F.linear(x, w1[:k], None if b1 is None else b1[:k])
        h = act(gate) * F.linear(x, w3[:k], None if b3 is None else b3[:k])  # [..., k]
    else:
        h = _hidden(project_in(x, w1, b1, layout, k), act, layout.gated)  # [..., k]
    w2, b2 = fc_out(h)
    return project_out(h, w2, b2, layout, k)


def prefix_mask(hidden: int, k: int, like: Tensor) -> Tensor:
    """m(s) of eq. 13: ones on the first k hidden channels. -> [hidden]"""
    m = torch.zeros(hidden, dtype=like.dtype, device=like.device)
    m[:k] = 1
    return m


def masked_mlp(x: Tensor, fc_in: WeightFn, fc_out: WeightFn, act: Callable[[Tensor], Tensor],
               layout: MLPLayout, mask: Tensor, fc_up: WeightFn | None = None) -> Tensor:
    """The full MLP with its hidden activations multiplied by mask (eq. 13). mask: [M] or [B, M]."""
    if layout.in_prefix or layout.out_prefix:
        raise ValueError("masked_mlp runs stand-alone MLPs")
    w1, b1 = fc_in(x)
    if fc_up is not None:
        w3, b3 = fc_up(x)
        h = act(F.linear(x, w1, b1)) * F.linear(x, w3, b3)
    else:
        h = _hidden(F.linear(x, w1, b1), act, layout.gated)  # [B, L, M]
    w2, b2 = fc_out(h)
    return F.linear(mask_hidden(h, mask), w2, b2)


def mask_hidden(h: Tensor, mask: Tensor) -> Tensor:
    """h [B, ..., M] times mask [M] or per-sample [B, M], in h's dtype."""
    if mask.dim() == 2:
        mask = mask.view(mask.shape[0], *([1] * (h.dim() - 2)), mask.shape[1])
    return h * mask.to(h.dtype)


def module_weights(module) -> WeightFn:
    """The trivial provider: a torch Linear's own parameters, cast to the activation's dtype."""
    def fn(x: Tensor):
        w, b = module.weight, module.bias
        if w.dtype != x.dtype or w.device != x.device:
            w = w.to(x)
            b = None if b is None else b.to(x)
        return w, b
    return fn
