"""Chroma: Flux blocks whose modulation comes precomputed per block (a distilled guidance layer).

The hook's `vec` is not a vector but the block's modulation: (img (mod1, mod2), txt (mod1, mod2)) for a
double block, one ModulationOut for a single block, fields [B, 1, D]. The router's conditioning is the
first modulation's scale of the image stream: per block, timestep dependent, [B, D].
"""
from __future__ import annotations

import dataclasses

from torch import Tensor

import comfy.ldm.chroma.model

from .flux import FluxAdapter


def _slice_mod(mod, rows: Tensor, batch: int):
    if dataclasses.is_dataclass(mod):
        return dataclasses.replace(mod, **{f.name: _slice_mod(getattr(mod, f.name), rows, batch)
                                           for f in dataclasses.fields(mod)})
    if isinstance(mod, (tuple, list)):
        return type(mod)(_slice_mod(m, rows, batch) for m in mod)
    if isinstance(mod, Tensor) and mod.dim() > 0 and mod.shape[0] == batch:
        return mod.index_select(0, rows)
    return mod


class ChromaAdapter(FluxAdapter):
    family = "chroma"
    model_classes = (comfy.ldm.chroma.model.Chroma,)

    def cond(self, ref, args: dict) -> Tensor:
        vec = args["vec"]
        mod = vec[0][0] if ref.hook == "double_block" else vec
        return mod.scale[:, 0]

    def slice_args(self, args: dict, rows: Tensor, batch: int) -> dict:
        out = super().slice_args(args, rows, batch)
        if batch > 1:
            out["vec"] = _slice_mod(args["vec"], rows, batch)
        return out
