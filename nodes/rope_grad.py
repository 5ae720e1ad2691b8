"""Backward formulas for comfy-kitchen's RoPE ops, which router training needs and which the library
registers without one (ComfyUI >= 0.8 calls `torch.ops.comfy_kitchen.apply_rope` / `apply_rope1` in
Flux, Chroma and Qwen-Image attention; backward through them raises "no autograd formula").

RoPE rotates each channel pair by a 2x2 matrix F (freqs_cis [..., pairs, 2, 2]): out = F x. Its
gradient is the same op with the transposed matrices: dL/dx = F^T dL/dout. Registered through
torch.library (the extension point torch provides for this) the first time the Train node runs, and
only where the op has no formula of its own; forward results are untouched.
"""
from __future__ import annotations

import torch

_done = False


def _has_op(name: str) -> bool:
    ns = getattr(torch.ops, "comfy_kitchen", None)
    try:
        return ns is not None and hasattr(ns, name)
    except RuntimeError:
        return False


def _setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[-1])  # freqs_cis


def _transposed(ctx) -> torch.Tensor:
    (freqs,) = ctx.saved_tensors
    return freqs.transpose(-1, -2)


def _rope_backward(ctx, gq, gk):
    dq, dk = torch.ops.comfy_kitchen.apply_rope(gq.contiguous(), gk.contiguous(), _transposed(ctx))
    return dq, dk, None


def _rope1_backward(ctx, g):
    return torch.ops.comfy_kitchen.apply_rope1(g.contiguous(), _transposed(ctx)), None


def _needs_formula(name: str) -> bool:
    """True where backward through the op raises (it has no formula)."""
    try:
        with torch.inference_mode(False), torch.enable_grad():
            freqs = torch.eye(2).expand(1, 1, 1, 2, 2).contiguous()
            x = torch.randn(1, 1, 1, 2, requires_grad=True)
            out = getattr(torch.ops.comfy_kitchen, name)(*([x, x] if name == "apply_rope" else [x]), freqs)
            (out[0] if isinstance(out, (tuple, list)) else out).sum().backward()
        return False
    except RuntimeError as e:
        return "autograd" in str(e)


def ensure_rope_grad() -> list[str]:
    """Register the formulas once per process, where missing. -> the op names registered now."""
    global _done
    if _done:
        return []
    _done = True
    done = []
    for name, backward in (("apply_rope", _rope_backward), ("apply_rope1", _rope1_backward)):
        if _has_op(name) and _needs_formula(name):
            torch.library.register_autograd(f"comfy_kitchen::{name}", backward, setup_context=_setup)
            done.append(name)
    return done
