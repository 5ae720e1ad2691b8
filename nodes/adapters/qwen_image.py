"""Qwen-Image (and its edit models): 60 double-stream blocks.

As the authors' released code: router input [txt; img] of the block input, conditioning `vec` (the
block's temb), width reduction on the image-stream MLP only. The blocks do not add in place.
The edit-2511 reference mode doubles temb's batch ([regular; zero-timestep]); rows slice both halves.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

import comfy.ldm.qwen_image.model

from ...elastic_core.blocks import BlockSpec
from ...elastic_core.config import RouterConfig
from ...elastic_core.elastic_mlp import MLPLayout
from ..twins import WidthSlot, gelu_of, mlp_twin
from .base import BlockRef, FamilyAdapter


class QwenImageAdapter(FamilyAdapter):
    family = "qwen_image"
    model_classes = (comfy.ldm.qwen_image.model.QwenImageTransformer2DModel,)
    inplace = False

    def blocks(self, dm) -> list[BlockRef]:
        ff = dm.transformer_blocks[0].img_mlp
        d, m = ff.net[0].proj.in_features, ff.net[0].proj.out_features
        return [BlockRef("double_block", i, f"transformer_blocks.{i}",
                         BlockSpec(f"transformer_blocks.{i}", "double", d, m, False, ("img",), "double"))
                for i in range(len(dm.transformer_blocks))]

    def router_config(self, dm) -> RouterConfig:
        return RouterConfig(dim=dm.transformer_blocks[0].img_mlp.net[0].proj.in_features)

    def width_patches(self, dm, ref: BlockRef, slot: WidthSlot, get) -> dict[str, nn.Module]:
        path = f"{ref.path}.img_mlp"
        ff = get(path)
        ff = getattr(ff, "_orig", ff)
        layout = MLPLayout(ref.spec.mlp_hidden)
        return {path: mlp_twin(ff, slot, ff.net[0].proj, ff.net[2], gelu_of(ff.net[0]), layout)}

    def activation_patches(self, dm, ref: BlockRef, slot: WidthSlot, get) -> dict[str, nn.Module]:
        """The text-stream MLP, never cut (as the released code): a twin that only swaps the activation."""
        path = f"{ref.path}.txt_mlp"
        ff = get(path)
        ff = getattr(ff, "_orig", ff)
        layout = MLPLayout(ref.spec.mlp_hidden)
        return {path: mlp_twin(ff, slot, ff.net[0].proj, ff.net[2], gelu_of(ff.net[0]), layout, narrow=False)}

    def streams(self, ref: BlockRef, args: dict) -> dict[str, Tensor]:
        return {"img": args["img"], "txt": args["txt"]}

    def router_tokens(self, ref: BlockRef, args: dict) -> list[Tensor]:
        return [args["txt"], args["img"]]

    def cond(self, ref: BlockRef, args: dict) -> Tensor:
        vec, b = args["vec"], args["img"].shape[0]
        return vec[:b] if vec.shape[0] == 2 * b else vec  # edit-2511 refs: the regular half

    def slice_args(self, args: dict, rows: Tensor, batch: int) -> dict:
        out = super().slice_args(args, rows, batch)
        vec = args["vec"]
        if vec.shape[0] == 2 * batch:
            out["vec"] = vec.index_select(0, torch.cat([rows, rows + batch]))
        return out
