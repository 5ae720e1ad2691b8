"""One interface for every DiT family: which blocks exist, how to read a block's streams and router
inputs from ComfyUI's `patches_replace["dit"]` hook args, how to run the original block on some rows,
and which modules to twin for MLP width reduction.

Adding a family = one subclass in its own file + one test file; nodes never special-case a family.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from ...elastic_core.blocks import BlockSpec
from ...elastic_core.config import RouterConfig
from ..twins import WidthSlot

Streams = dict[str, Tensor]


@dataclass(frozen=True)
class BlockRef:
    hook: str  # patches_replace["dit"] block name: "double_block" / "single_block"
    index: int  # index within that hook name (the number ComfyUI passes)
    path: str  # module path under diffusion_model, e.g. "double_blocks.3"
    spec: BlockSpec


class FamilyAdapter:
    family: str = ""
    model_classes: tuple[type, ...] = ()  # comfy.ldm classes this adapter serves (isinstance)
    inplace: bool = False  # the family's blocks add into their input tensors in place

    def matches(self, dm: nn.Module) -> bool:
        return isinstance(dm, self.model_classes)

    def refusal(self, dm: nn.Module) -> str | None:
        """Why this adapter's model class holds a model it cannot serve (a variant of another layout), or None."""
        return None

    # -- what the model has ----------------------------------------------------------------------
    def blocks(self, dm: nn.Module) -> list[BlockRef]:
        raise NotImplementedError

    def router_config(self, dm: nn.Module) -> RouterConfig:
        raise NotImplementedError

    def width_patches(self, dm: nn.Module, ref: BlockRef, slot: WidthSlot,
                      get: Callable[[str], nn.Module]) -> dict[str, nn.Module]:
        """Object patches {path under diffusion_model: twin} that cut this block's MLP width.
        `get(path)` returns the module now at that path (honouring patches already there)."""
        raise NotImplementedError

    def activation_patches(self, dm: nn.Module, ref: BlockRef, slot: WidthSlot,
                           get: Callable[[str], nn.Module]) -> dict[str, nn.Module] | None:
        """Object patches for this block's MLPs that `width_patches` does not twin, so that `slot.act`
        (the activation a router file asks for) reaches every MLP of the block. {}: width_patches
        covers them all; None (the default): this family cannot run its MLPs with another activation."""
        return None

    # -- one hook call ---------------------------------------------------------------------------
    def streams(self, ref: BlockRef, args: dict) -> Streams:
        """The block's input streams, each [B, L, D]."""
        raise NotImplementedError

    def router_tokens(self, ref: BlockRef, args: dict) -> list[Tensor]:
        raise NotImplementedError

    def cond(self, ref: BlockRef, args: dict) -> Tensor:
        """The conditioning vector the router reads. -> [B, C]"""
        return args["vec"]

    def slice_args(self, args: dict, rows: Tensor, batch: int) -> dict:
        """The hook args for a subset of rows: batch-first tensors are sliced, the rest kept."""
        return {k: (v.index_select(0, rows) if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == batch
                    and batch > 1 else v) for k, v in args.items()}

    # -- hooks beyond the block hooks ------------------------------------------------------------
    def extra_hooks(self, m, patch) -> None:
        """Further sanctioned hooks this family needs on the clone `m` (a ModelPatcher), called once
        its block hooks and twins for `patch` are in place. Default: none.

        For a model whose block-hook contract differs from the usual one (args carry
        `transformer_options`; the hook returns a dict of streams), e.g. Hunyuan3D 2.1."""

    def call(self, ref: BlockRef, args: dict, original: Callable[[dict], dict], x: Streams,
             rows: Tensor | None, batch: int) -> Streams:
        """Run the original block on `rows` (None: all) with these input streams."""
        a = dict(args) if rows is None else self.slice_args(args, rows, batch)
        a.update(x)
        out = original(a)
        return {k: out[k] for k in x}

