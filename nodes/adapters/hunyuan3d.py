"""Hunyuan3D 2.0 (and 2.0 mini / multi-view), ComfyUI's `Hunyuan3Dv2`: image-to-3D with Flux's own
double and single blocks (16 + 32 on 2.0, D = 1024), over shape-latent tokens [B, L, D] ("img") and
the projected image-encoder tokens [B, S, D] ("txt").

Everything is as for Flux, whose adapter this extends: router input [txt; img] of a double block's
input and the joint tokens of a single block's, conditioning `vec` (timestep, plus guidance on
guidance-distilled checkpoints); width cut on both MLPs of a double block and the fused projections
of a single block; the blocks add into their inputs in place, so the engine hands them copies.
The model has no rotary embedding (`pe` is None) and no `hidden_size` attribute: widths are read
from the blocks.
"""
from __future__ import annotations

import comfy.ldm.hunyuan3d.model

from ...elastic_core.config import RouterConfig
from .flux import FluxAdapter, _mlp_kind


class Hunyuan3D2Adapter(FluxAdapter):
    family = "hunyuan3d2"
    model_classes = (comfy.ldm.hunyuan3d.model.Hunyuan3Dv2,)

    def _dims(self, dm) -> tuple[int, int, bool]:
        mlp = dm.double_blocks[0].img_mlp  # Sequential(Linear(D, M), GELU, Linear(M, D))
        return mlp[0].in_features, mlp[2].in_features, _mlp_kind(mlp) == "swiglu"

    def router_config(self, dm) -> RouterConfig:
        return RouterConfig(dim=self._dims(dm)[0])
