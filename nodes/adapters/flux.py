"""Flux.1 (and Kontext): 19 double blocks + 38 single blocks on Flux-dev.

Router input: [txt; img] tokens of a double block's input, the joint tokens of a single block's;
conditioning: `vec`. Width reduction: both MLPs of a double block, the fused projections of a single
block (linear1 = [qkv 3D; mlp M], linear2 = [attn D; mlp M]). Flux blocks add into their inputs in
place, so the engine hands them copies.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

import comfy.ldm.flux.model

from ...elastic_core.blocks import BlockSpec
from ...elastic_core.config import RouterConfig
from ...elastic_core.elastic_mlp import MLPLayout
from ..twins import WidthSlot, gelu_of, in_twin, mlp_twin, out_twin
from .base import BlockRef, FamilyAdapter


class UnsupportedLayout(ValueError):
    pass


def mlp_refusal(dm, what: str, expected: str, why: str) -> str | None:
    """Why a Flux-class model's MLPs cannot be cut as the family's (`expected`: "gelu" or "swiglu"), or None.
    Flux.1 and Flux.2 share the check: separate gate / up / down projections (yak_mlp, e.g. Ovis), or
    another MLP than the family's."""
    if getattr(getattr(dm, "params", None), "yak_mlp", False):
        return f"{what} with separate gate / up / down MLP projections (yak_mlp, e.g. Ovis), which Elastic DiT does not cut"
    try:
        kind = _mlp_kind(dm.double_blocks[0].img_mlp)
    except UnsupportedLayout as e:
        return str(e)
    return None if kind == expected else f"{what} with a {kind} MLP, {why}"


def _mlp_kind(seq: nn.Module) -> str:
    """'gelu' for Linear -> GELU -> Linear, 'swiglu' for Linear(D, 2M) -> SiLU-gate -> Linear (Flux2)."""
    if isinstance(seq, nn.Sequential) and len(seq) == 3 and isinstance(seq[0], nn.Linear) and isinstance(seq[2], nn.Linear):
        if isinstance(seq[1], nn.GELU):
            return "gelu"
        if seq[0].out_features == 2 * seq[2].in_features:
            return "swiglu"
    raise UnsupportedLayout(f"MLP {type(seq).__name__} has a layout width reduction does not know")


def global_modulation(dm: nn.Module) -> bool:
    """Flux.2 (ComfyUI v0.8+) shares Flux.1's class; its blocks take shared modulations, not a vector."""
    return bool(getattr(getattr(dm, "params", None), "global_modulation", False))


class FluxAdapter(FamilyAdapter):
    family = "flux"
    model_classes = (comfy.ldm.flux.model.Flux,)
    inplace = True

    def matches(self, dm) -> bool:
        return isinstance(dm, self.model_classes) and not global_modulation(dm)  # Flux.2: its own adapter

    def refusal(self, dm) -> str | None:
        """Ovis shares this class (`yak_mlp`: separate gate / up / down MLP projections)."""
        return mlp_refusal(dm, "a Flux-type model", "gelu", "which Elastic DiT does not cut for Flux.1")

    def _dims(self, dm) -> tuple[int, int, bool]:
        mlp = dm.double_blocks[0].img_mlp
        gated = _mlp_kind(mlp) == "swiglu"
        return dm.hidden_size, mlp[2].in_features, gated

    def blocks(self, dm) -> list[BlockRef]:
        d, m, gated = self._dims(dm)
        refs = [BlockRef("double_block", i, f"double_blocks.{i}",
                         BlockSpec(f"double_blocks.{i}", "double", d, m, gated, ("img", "txt"), "double"))
                for i in range(len(dm.double_blocks))]
        refs += [BlockRef("single_block", i, f"single_blocks.{i}",
                          BlockSpec(f"single_blocks.{i}", "single", d, m, gated, ("img",), "single"))
                 for i in range(len(dm.single_blocks))]
        return refs

    def router_config(self, dm) -> RouterConfig:
        return RouterConfig(dim=dm.hidden_size)

    def width_patches(self, dm, ref: BlockRef, slot: WidthSlot, get) -> dict[str, nn.Module]:
        spec = ref.spec
        if ref.hook == "double_block":
            out = {}
            for stream in ("img", "txt"):
                path = f"{ref.path}.{stream}_mlp"
                seq = get(path)
                seq = getattr(seq, "_orig", seq)
                act = gelu_of(seq[1]) if _mlp_kind(seq) == "gelu" else F.silu
                out[path] = mlp_twin(seq, slot, seq[0], seq[2], act, MLPLayout(spec.mlp_hidden, gated=spec.gated))
            return out
        layout = MLPLayout(spec.mlp_hidden, gated=spec.gated, in_prefix=3 * spec.dim, out_prefix=spec.dim)
        l1, l2 = f"{ref.path}.linear1", f"{ref.path}.linear2"
        return {l1: in_twin(get(l1), slot, layout), l2: out_twin(get(l2), slot, layout)}

    def streams(self, ref: BlockRef, args: dict) -> dict[str, Tensor]:
        if ref.hook == "double_block":
            return {"img": args["img"], "txt": args["txt"]}
        return {"img": args["img"]}  # single blocks: joint [txt; img] tokens

    def router_tokens(self, ref: BlockRef, args: dict) -> list[Tensor]:
        return [args["txt"], args["img"]] if ref.hook == "double_block" else [args["img"]]

