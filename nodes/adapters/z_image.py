"""Z-Image (Turbo and base), ComfyUI's `ZImage`: Lumina 2's NextDiT class with Z-Image's modulation.
30 layers (D = 3840, 30 heads) over one joint stream [caption; image] tokens [B, L, D] (each part
padded to a multiple of 32 with learned pad tokens), after 2 context-refiner layers (caption only)
and 2 noise-refiner layers (image only), which are not routed: they are the model's input stage.

- Hook: the layers have no `patches_replace["dit"]` hook. Each routed layer is object-patched on the
  clone with a view of itself that hands its call to `patches_replace["dit"][("layer", i)]`
  (`nodes/layer_hook.py`); ModelPatcher undoes it on unpatch.
- Router input: the layer's input x, [caption; image] tokens. Conditioning: `adaln_input`, the
  timestep embedding every layer's adaLN reads, [B, 256].
- Width: the SwiGLU feed-forward w2(silu(w1 x) * w3 x), M = 10240: rows 0..k of w1 and w3, columns
  0..k of w2.
- Not in place (x = x + ...).

Refused: Lumina 2.0 (NextDiT with Lumina's own modulation; not tested here), Z-Image-Omni (a SigLIP
image branch; its reference tokens run at timestep zero inside the layers), and NextDiT classes of
other layouts (the pixel-space decoder head).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

import comfy.ldm.lumina.model

from ...elastic_core.blocks import BlockSpec
from ...elastic_core.config import RouterConfig
from ...elastic_core.elastic_mlp import MLPLayout
from ..layer_hook import hooked_layer
from ..twins import WidthSlot, mlp_twin
from .base import BlockRef, FamilyAdapter

HOOK = "layer"


def _z_image_modulation(dm) -> bool:
    """Z-Image's adaLN is one Linear(256, 4D) on the timestep embedding; Lumina 2's is SiLU -> Linear."""
    ada = dm.layers[0].adaLN_modulation
    return len(ada) == 1 and isinstance(ada[0], nn.Linear)


class ZImageAdapter(FamilyAdapter):
    family = "z_image"
    model_classes = (comfy.ldm.lumina.model.NextDiT,)
    inplace = False

    def refusal(self, dm) -> str | None:
        if type(dm) is not comfy.ldm.lumina.model.NextDiT:
            return f"{type(dm).__name__}, a NextDiT of another layout, which Elastic DiT has not been tested with"
        if not _z_image_modulation(dm):
            return "a Lumina 2.0 model (NextDiT without Z-Image's modulation), which Elastic DiT does not support yet"
        if getattr(dm, "siglip_embedder", None) is not None:
            return "a Z-Image-Omni model (SigLIP image branch), which Elastic DiT does not support yet"
        if getattr(dm, "clip_text_pooled_proj", None) is not None:
            return "a NextDiT with pooled text conditioning (clip_text_dim), which Elastic DiT does not support yet"
        return None

    def blocks(self, dm) -> list[BlockRef]:
        ff = dm.layers[0].feed_forward
        d, m = ff.w1.in_features, ff.w1.out_features
        return [BlockRef(HOOK, i, f"layers.{i}", BlockSpec(f"layers.{i}", "double", d, m, True, ("x",), "layer"))
                for i in range(len(dm.layers))]

    def router_config(self, dm) -> RouterConfig:
        return RouterConfig(dim=dm.dim, cond_dim=dm.layers[0].adaLN_modulation[-1].in_features)

    def width_patches(self, dm, ref: BlockRef, slot: WidthSlot, get) -> dict[str, nn.Module]:
        path = f"{ref.path}.feed_forward"
        ff = get(path)
        ff = getattr(ff, "_orig", ff)  # FeedForward: w2(silu(w1 x) * w3 x)
        layout = MLPLayout(ref.spec.mlp_hidden, gated=True)
        return {path: mlp_twin(ff, slot, ff.w1, ff.w2, F.silu, layout, fc_up=ff.w3)}

    def streams(self, ref: BlockRef, args: dict) -> dict[str, Tensor]:
        return {"x": args["x"]}

    def router_tokens(self, ref: BlockRef, args: dict) -> list[Tensor]:
        return [args["x"]]

    def cond(self, ref: BlockRef, args: dict) -> Tensor:
        return args["adaln_input"]  # [B, 256]

    def extra_hooks(self, m, patch) -> None:
        for ref in patch.refs:
            path = f"diffusion_model.{ref.path}"
            m.add_object_patch(path, hooked_layer(m.get_model_object(path), (ref.hook, ref.index)))
