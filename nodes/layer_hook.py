"""A `patches_replace["dit"]` hook for models whose layers have none (Z-Image / Lumina's NextDiT).

The layer is replaced on the CLONED model, by `add_object_patch`, with a view of itself (one module,
two views, like the MLP twins in `twins.py`: it shares the original's instance `__dict__`, so weights,
children and ComfyUI's load state stay one). The view's forward does what a model with the hook does
at that layer: when the call's transformer_options hold `patches_replace["dit"][key]`, it hands the
layer's inputs to that hook as named args, with `original_block` running the layer's own forward;
otherwise it is the layer's own forward. ModelPatcher restores the original layer on unpatch.
"""
from __future__ import annotations

import inspect

from torch import nn

HookKey = tuple[str, int]


class _HookedLayer:
    """Mixin base; `_key` is the patches_replace["dit"] key, `_params` the layer forward's arg names."""

    def forward(self, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        hook = to.get("patches_replace", {}).get("dit", {}).get(self._key)
        own = super().forward
        if hook is None:
            return own(*args, **kwargs)
        named = {**dict(zip(("x",) + self._params[1:], args)), **kwargs}
        named.setdefault("transformer_options", to)

        first = self._params[0]

        def original_block(a: dict) -> dict:
            a = {(first if k == "x" else k): v for k, v in a.items()}
            return {"x": own(**a)}
        return hook(named, {"original_block": original_block})["x"]


def hooked_layer(orig: nn.Module, key: HookKey) -> nn.Module:
    """A view of `orig` whose calls go through patches_replace["dit"][key] when it is set.

    The layer's first argument is its token stream, named "x" in the hook args and in what the hook
    returns."""
    orig = getattr(orig, "_orig", orig)
    params = [p for p in inspect.signature(type(orig).forward).parameters if p != "self"]
    extra = {"__module__": __name__, "_orig": orig, "_key": key, "_params": tuple(params)}
    view = object.__new__(type(f"Hooked{type(orig).__name__}", (_HookedLayer, type(orig)), extra))
    object.__setattr__(view, "__dict__", orig.__dict__)
    return view
