"""Wan 2.1 / 2.2 (T2V, I2V, 2.2 TI2V 5B), ComfyUI's `WanModel`: 30 (1.3B, 5B) or 40 (14B) blocks over
the video tokens [B, T' H' W', D] of a latent [B, C, T, H, W]; each block runs self-attention over all
video tokens, cross-attention to the text (and, I2V 2.1, CLIP image) tokens, then a GELU MLP.
Wan 2.2 A14B is two models (high-noise, low-noise expert): each gets its own Apply node and router file.

- Hook: `patches_replace["dit"][("double_block", i)]`, args {"img": video tokens, "txt": context,
  "vec": e0 [B, 1 or L, 6, D], "pe"}.
- Router input: the block's video tokens. Conditioning: the block modulation's first (shift)
  chunk, averaged over its tokens, [B, D] (2.2 TI2V gives each token its own timestep: the image
  frame's tokens sit at timestep zero).
- Width: the feed-forward Linear(D, F) -> GELU -> Linear(F, D).
- Not in place.
- Cost: self-attention over all video tokens, the cross-attention's query and output projections
  (its keys, values and scores over the text depend on the condition and are not counted), the MLP.

Refused: WanModel subclasses with extra branches (VACE, camera, S2V, HuMo, Animate, ...), which this
adapter has not been tested with.
"""
from __future__ import annotations

from torch import Tensor, nn

import comfy.ldm.wan.model

from ...elastic_core.config import RouterConfig
from ...elastic_core.elastic_mlp import MLPLayout
from ..twins import WidthSlot, gelu_of, mlp_twin
from .base import BlockRef, FamilyAdapter
from .hunyuan3d_2_1 import Hunyuan3D21BlockSpec as CrossAttnBlockSpec  # self-attn + cross-attn q, o + MLP


class WanAdapter(FamilyAdapter):
    family = "wan"
    model_classes = (comfy.ldm.wan.model.WanModel,)
    inplace = False

    def refusal(self, dm) -> str | None:
        if type(dm) is not comfy.ldm.wan.model.WanModel:
            return (f"{type(dm).__name__}, a Wan model with a branch Elastic DiT has not been tested with "
                    "(VACE, camera, audio or motion conditioning)")
        return None

    def blocks(self, dm) -> list[BlockRef]:
        d, f = dm.dim, dm.blocks[0].ffn[0].out_features
        return [BlockRef("double_block", i, f"blocks.{i}",
                         CrossAttnBlockSpec(f"blocks.{i}", "double", d, f, False, ("img",), "block"))
                for i in range(len(dm.blocks))]

    def router_config(self, dm) -> RouterConfig:
        return RouterConfig(dim=dm.dim)

    def width_patches(self, dm, ref: BlockRef, slot: WidthSlot, get) -> dict[str, nn.Module]:
        path = f"{ref.path}.ffn"
        ffn = get(path)
        ffn = getattr(ffn, "_orig", ffn)  # Sequential(Linear(D, F), GELU(tanh), Linear(F, D))
        return {path: mlp_twin(ffn, slot, ffn[0], ffn[2], gelu_of(ffn[1]), MLPLayout(ref.spec.mlp_hidden))}

    def streams(self, ref: BlockRef, args: dict) -> dict[str, Tensor]:
        return {"img": args["img"]}

    def router_tokens(self, ref: BlockRef, args: dict) -> list[Tensor]:
        return [args["img"]]

    def cond(self, ref: BlockRef, args: dict) -> Tensor:
        return args["vec"][:, :, 0].mean(1)  # e0 [B, 1 or L, 6, D] -> [B, D]
