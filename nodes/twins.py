"""MLP width reduction inside a ComfyUI block, through object patches only.

A block's MLP (or, for Flux single blocks, its fused projections) is replaced on the CLONED model by a
"twin": a second view of the very same module whose forward reads the width the router chose for the
current call from a `WidthSlot`. With no width set, the twin calls its class's own forward, so
results are bit-identical to the unpatched model. ModelPatcher installs twins with `add_object_patch`
and restores the originals on unpatch; the user's MODEL is never touched.

A twin SHARES the original's instance `__dict__`: parameters, buffers, children, and the load state
ComfyUI hangs on a layer (lowvram `weight_function`, `prev_comfy_cast_weights`, ...). Weight keys, LoRA
patching and lowvram casting see nothing new, and whatever ComfyUI sets or wipes on the twin while it
is in the model, it sets or wipes on the original: a patcher that loads the model through a twin and a
patcher that loads it without one leave the layer in the same state. (A twin with a copied state
would let the original keep a detached LoRA clone's lowvram patch, which a later load of the plain
model then applies.) What the twin adds (its slot, layout, the original) lives on its own class.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..elastic_core.elastic_mlp import MLPLayout, elastic_mlp, mask_hidden, masked_mlp, project_in, project_out
from .weights import effective_weights, provider

class WidthSlot:
    """What the current block call runs at: `width`, a ratio (None = full width, the original forward),
    or, in router training, `mask`, a [B, M] straight-through mask over the hidden channels.

    `act`, set once per patched model: the MLP activation the router file asks for (the released
    routers' DiT ran x * sigmoid(1.702 x)); None = the module's own. With it, twins run their MLP through
    the weight provider at every width, full width included, instead of the module's own forward."""

    __slots__ = ("width", "mask", "act")

    def __init__(self, act: Callable[[Tensor], Tensor] | None = None):
        self.width: float | None = None
        self.mask: Tensor | None = None
        self.act = act


class _Twin:
    """Mixin base; `_orig` is the module this twin views (never registered as a child)."""

    def _reduced(self) -> float | None:
        w = self._slot.width
        return None if w is None or w >= 1.0 else w


class _MLPTwin(_Twin):
    """A whole MLP container (Sequential / FeedForward): fc_in -> act -> fc_out at width k, compact.
    A twin that does not `_narrow` (an MLP the routers never cut) only swaps the activation."""

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        act = self._slot.act or self._act
        up = None if self._fc_up is None else provider(self._fc_up)
        if self._narrow and self._slot.mask is not None:  # training: full width, hidden channels masked
            return masked_mlp(x, provider(self._fc_in), provider(self._fc_out), act, self._layout,
                              self._slot.mask, fc_up=up)
        w = self._reduced() if self._narrow else None
        if w is None and self._slot.act is None:
            return super().forward(x, *args, **kwargs)
        return elastic_mlp(x, provider(self._fc_in), provider(self._fc_out), act, self._layout,
                           1.0 if w is None else w, fc_up=up)


class _InTwin(_Twin):
    """A fused in-projection [prefix; mlp M]: computes prefix + k rows, padded so host splits still fit."""

    def forward(self, x: Tensor) -> Tensor:
        w = self._reduced()
        if w is None:
            return super().forward(x)
        weight, bias = effective_weights(self, x)  # self sits at the path ModelPatcher loads
        return project_in(x, weight, bias, self._layout, self._layout.channels(w), pad=True)


class _OutTwin(_Twin):
    """A fused out-projection reading [prefix; mlp M]: reads only prefix + k input channels."""

    def forward(self, h: Tensor) -> Tensor:
        if self._slot.mask is not None:  # training: mask the MLP part of the input, then the full projection
            p = self._layout.out_prefix
            return super().forward(torch.cat([h[..., :p], mask_hidden(h[..., p:], self._slot.mask)], dim=-1))
        w = self._reduced()
        if w is None:
            return super().forward(h)
        weight, bias = effective_weights(self, h)
        return project_out(h, weight, bias, self._layout, self._layout.channels(w))


def _make(orig: nn.Module, mixin: type, **attrs) -> nn.Module:
    orig = getattr(orig, "_orig", orig)  # re-applying the node twins the original, not a twin
    # staticmethod: a function kept here (the activation) must not bind to the twin as a method
    extra = {"__module__": __name__, "_orig": orig, **{f"_{k}": staticmethod(v) for k, v in attrs.items()}}
    twin = object.__new__(type(f"Elastic{type(orig).__name__}", (mixin, type(orig)), extra))
    object.__setattr__(twin, "__dict__", orig.__dict__)  # one module, two views (see the module docstring)
    return twin


def mlp_twin(orig: nn.Module, slot: WidthSlot, fc_in: nn.Module, fc_out: nn.Module,
             act: Callable[[Tensor], Tensor], layout: MLPLayout, fc_up: nn.Module | None = None,
             narrow: bool = True) -> nn.Module:
    """narrow=False: an MLP the routers never cut (Qwen-Image's text stream); it follows only `slot.act`."""
    return _make(orig, _MLPTwin, slot=slot, fc_in=fc_in, fc_out=fc_out, act=act, layout=layout, fc_up=fc_up,
                 narrow=narrow)


def in_twin(orig: nn.Module, slot: WidthSlot, layout: MLPLayout) -> nn.Module:
    return _make(orig, _InTwin, slot=slot, layout=layout)


def out_twin(orig: nn.Module, slot: WidthSlot, layout: MLPLayout) -> nn.Module:
    return _make(orig, _OutTwin, slot=slot, layout=layout)


def gelu_of(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """The activation a GELU-type module applies (tanh approximation unless it says otherwise)."""
    approximate = getattr(module, "approximate", "tanh")
    return lambda x: F.gelu(x, approximate=approximate)
