"""Hunyuan3D 2.1, ComfyUI's `HunYuanDiTPlain`: 21 blocks (D = 2048) over one token stream
x = [time token; shape-latent tokens] [B, 1 + L, D]; each block runs self-attention, cross-attention
to the image condition [B, S, C_img] (C_img = 1024, not D), then its feed-forward. Blocks after the
middle first fuse a long skip from the first half; the last 6 blocks have a mixture-of-experts
feed-forward (8 routed experts, top 2 per token, plus one shared expert).

- Router input: the block's input tokens x. The image condition reaches the router through x (what
  the cross-attention of earlier blocks wrote into it); the router has no projection of its own for
  C_img-wide tokens. Conditioning: the time embedding t [B, 1, D] -> [B, D].
- Width: the feed-forward's hidden channels (fc1 D -> 4D, GELU, fc2). In an MoE block every routed
  expert AND the shared expert run at the same fraction of their own hidden channels; the MoE gate
  (which experts a token goes to, and their weights) is left as it is. Per expert, because the MoE
  layers are where the compute is (three 4D-wide feed-forwards per token against one), the gate's
  choice reads the block's input and not the width, so a narrowed block still mixes the same
  experts, and one ratio for all keeps "width" meaning one thing in the router (a share of each
  feed-forward's channels) and in the cost count. Cutting the shared expert alone would save a
  third of the MoE compute at most; skipping the width cut in MoE blocks would leave it all.
  Router training sees the MoE only partly: ComfyUI's expert dispatch runs without autograd, so
  gradients reach the routers through the shared expert and the residual path, not the routed
  experts.
- Not in place.

Hook contract: the model calls `patches_replace["dit"][("block", i)]` with args {"x", "t", "cond",
"skip"} (no `transformer_options`) and takes a tensor back. `extra_hooks` adapts the clone's block
hooks to the engine's contract: an APPLY_MODEL wrapper hands each model call's transformer_options
to the hooks, which return the model a tensor. With 2+ rows the model swaps the two halves of the
context (and of its output): a hidden row of the first half carries the second half's condition, so
the stream marks the hooks see are rotated by half (ComfyUI before 0.33 always swaps and so samples
only with cfg > 1; at cfg 1 with two samples ComfyUI 0.33 pairs each latent with the other's
condition, a model quirk left as it is).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import comfy.ldm.hunyuan3dv2_1.hunyuandit
import comfy.patcher_extension

from ...elastic_core.blocks import BlockSpec
from ...elastic_core.config import RouterConfig
from ...elastic_core.elastic_mlp import MLPLayout
from ..twins import WidthSlot, gelu_of, mlp_twin
from .base import BlockRef, FamilyAdapter

WRAPPER_KEY = "elastic_dit"
SLOT_KEY = "elastic_dit_width_slot"  # the block's WidthSlot, in the args our hooks hand on
APPLY_MODEL = comfy.patcher_extension.WrappersMP.APPLY_MODEL


@dataclass(frozen=True)
class Hunyuan3D21BlockSpec(BlockSpec):
    """A block's cost: self-attention, the cross-attention's query and output projections (its keys,
    values and scores over the image tokens depend on the condition and are not counted), and
    `ffn_per_token` feed-forwards per token (MoE: top-k routed experts + the shared one)."""
    ffn_per_token: int = 1

    def attn_flops(self, tokens: dict[str, int]) -> float:
        n = sum(tokens.values())
        return super().attn_flops(tokens) + n * 2.0 * self.dim * 2 * self.dim

    def mlp_flops(self, tokens: dict[str, int], ratio: float = 1.0) -> float:
        return self.ffn_per_token * super().mlp_flops(tokens, ratio)


def _orig(module: nn.Module) -> nn.Module:
    return getattr(module, "_orig", module)


class Hunyuan3D21Adapter(FamilyAdapter):
    family = "hunyuan3d2_1"
    model_classes = (comfy.ldm.hunyuan3dv2_1.hunyuandit.HunYuanDiTPlain,)
    inplace = False

    def blocks(self, dm) -> list[BlockRef]:
        refs = []
        for i, blk in enumerate(dm.blocks):
            moe = blk.moe if blk.use_moe else None
            hidden = (moe.shared_experts.net[2] if moe is not None else blk.mlp.fc2).in_features
            spec = Hunyuan3D21BlockSpec(f"blocks.{i}", "double", dm.hidden_size, hidden, False, ("x",),
                                        "moe" if moe is not None else "dense",
                                        ffn_per_token=moe.moe_top_k + 1 if moe is not None else 1)
            refs.append(BlockRef("block", i, f"blocks.{i}", spec))
        return refs

    def router_config(self, dm) -> RouterConfig:
        return RouterConfig(dim=dm.hidden_size)

    def width_patches(self, dm, ref: BlockRef, slot: WidthSlot, get) -> dict[str, nn.Module]:
        layout = MLPLayout(ref.spec.mlp_hidden)
        if not dm.blocks[ref.index].use_moe:  # MLP: fc1 -> GELU -> fc2
            path = f"{ref.path}.mlp"
            mlp = _orig(get(path))
            return {path: mlp_twin(mlp, slot, mlp.fc1, mlp.fc2, gelu_of(mlp.gelu), layout)}
        moe = _orig(get(f"{ref.path}.moe"))
        paths = [f"{ref.path}.moe.experts.{j}" for j in range(len(moe.experts))] + [f"{ref.path}.moe.shared_experts"]
        out = {}
        for path in paths:  # FeedForward: net = [GELU(proj D -> 4D), Dropout, Linear 4D -> D]
            ff = _orig(get(path))
            out[path] = mlp_twin(ff, slot, ff.net[0].proj, ff.net[2], ff.net[0].gelu, layout)
        return out

    def streams(self, ref: BlockRef, args: dict) -> dict[str, Tensor]:
        return {"x": args["x"]}

    def router_tokens(self, ref: BlockRef, args: dict) -> list[Tensor]:
        return [args["x"]]

    def cond(self, ref: BlockRef, args: dict) -> Tensor:
        t = args["t"]  # [B, 1, D]
        return t[:, 0] if t.dim() == 3 else t

    def call(self, ref: BlockRef, args: dict, original, x, rows, batch) -> dict[str, Tensor]:
        a = dict(args) if rows is None else self.slice_args(args, rows, batch)
        a.update(x)
        slot: WidthSlot | None = a.pop(SLOT_KEY, None)
        mask = None if slot is None else slot.mask  # router training: [b, M]
        if mask is not None and mask.shape[0] > 1 and ref.spec.group == "moe":
            return {"x": self._rows_apart(a, original, slot, mask)}
        return {"x": _tensor(original(a))}

    def _rows_apart(self, a: dict, original, slot: WidthSlot, mask: Tensor) -> Tensor:
        """An MoE block in router training, one row at a time: the routed experts see tokens of all
        rows mixed, so a per-row width mask [b, M] can reach them only one row at a time."""
        b, outs = mask.shape[0], []
        try:
            for r in range(b):
                slot.mask = mask[r:r + 1]
                outs.append(_tensor(original(self.slice_args(a, torch.tensor([r], device=mask.device), b))))
        finally:
            slot.mask = mask
        return torch.cat(outs)  # [b, 1 + L, D]

    def extra_hooks(self, m, patch) -> None:
        calls: list[dict] = []  # transformer_options of the model call under way; shared by clones of m
        dit = m.model_options["transformer_options"]["patches_replace"]["dit"]
        for ref, slot in zip(patch.refs, patch.slots):
            m.set_model_patch_replace(_tensor_hook(dit[(ref.hook, ref.index)], calls, slot), "dit", ref.hook, ref.index)
        m.remove_wrappers_with_key(APPLY_MODEL, WRAPPER_KEY)
        m.add_wrapper_with_key(APPLY_MODEL, WRAPPER_KEY, functools.partial(_hand_options, calls))


def _tensor(out) -> Tensor:
    return out if isinstance(out, Tensor) else out["x"]


def _tensor_hook(hook, calls: list[dict], slot: WidthSlot):
    """`hook` (the engine's contract) as this model calls it: args without transformer_options, a
    tensor returned. The block's width slot rides along in the args for `call`.

    A block that takes a long skip is not recomputed by router training's gradient checkpointing:
    its skip input comes from an earlier block (so it carries the routers' gradient) but is not one
    of the streams the checkpoint is given, and a reentrant recompute would backpropagate through
    it a second time. Such blocks keep their activations instead."""
    def adapted(args: dict, extra: dict):
        args = {**args, SLOT_KEY: slot}
        if args.get("skip") is not None:  # not a plain function: router training will not recompute it
            extra = {**extra, "original_block": functools.partial(extra["original_block"])}
        if "transformer_options" not in args and calls:
            args["transformer_options"] = calls[-1]
        out = hook(args, extra)
        return out["x"] if isinstance(out, dict) else out
    adapted.elastic_dit_prev = getattr(hook, "elastic_dit_prev", None)  # a later Apply replaces, never stacks
    return adapted


def _hand_options(calls: list[dict], executor, *args, **kwargs):
    """APPLY_MODEL wrapper: apply_model(x, t, c_concat, c_crossattn, control, transformer_options, ...)."""
    x = args[0]
    to = args[5] if len(args) > 5 else kwargs.get("transformer_options", {})
    calls.append(_hook_view(to, x.shape[0]))
    try:
        return executor(*args, **kwargs)
    finally:
        calls.pop()


def _hook_view(to: dict, batch: int) -> dict:
    """transformer_options as the block hooks see them: with the context halves swapped (2+ rows),
    the stream marks and cond uuids rotate by half so each hidden row is named (and cached) for the
    condition it carries."""
    marks = list(to.get("cond_or_uncond") or [])
    if batch < 2 or len(marks) < 2 or len(marks) % 2 or batch % len(marks):
        return to
    half = len(marks) // 2
    view = {**to, "cond_or_uncond": marks[half:] + marks[:half]}
    uuids = list(to.get("uuids") or [])
    if len(uuids) == len(marks):  # each chunk keeps its cond's identity (its residual bank) with its mark
        view["uuids"] = uuids[half:] + uuids[:half]
    return view
