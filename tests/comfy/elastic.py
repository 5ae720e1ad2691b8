"""Routers and Apply-node calls for the real-ComfyUI tests, through the pack's own modules."""
from __future__ import annotations

import pytest
import torch

from devtools.tiny_models import logit, make_routers, missing  # noqa: F401

APPLY_DEFAULTS = dict(tau=0.5, delta=0.015, max_reuse=10, skip_blocks=True, adapt_width=True, cache=True,
                      cache_start_percent=0.5, cache_end_percent=1.0)


@torch.no_grad()
def force(router, p=None, width_idx=None):
    if p is not None:
        router.out[2].weight.zero_()
        router.out[2].bias.fill_(logit(p))
    if width_idx is not None:
        router.width_head.weight.zero_()
        router.width_head.bias.fill_(-10.0)
        router.width_head.bias[width_idx] = 10.0
    return router


def need(kind: str) -> None:
    """Skip, with the reason, where this ComfyUI has no class for the tiny model `kind`."""
    why = missing(kind)
    if why:
        pytest.skip(why)


def apply(comfy_nodes, model, ckpt, **kw):
    node = comfy_nodes.NODE_CLASS_MAPPINGS["ElasticDiTApply"]()
    return node.apply(model, ckpt, **{**APPLY_DEFAULTS, **kw})[0]


def patch_block(pack, model, ref, fn):
    """A clone of model with fn(args, extra) as block `ref`'s patches_replace["dit"] hook; for a model
    whose layers have no such hook (Z-Image), with the pack's view of the layer that calls it."""
    m = model.clone()
    m.set_model_patch_replace(fn, "dit", ref.hook, ref.index)
    if ref.hook == "layer":
        path = f"diffusion_model.{ref.path}"
        m.add_object_patch(path, pack.nodes.layer_hook.hooked_layer(m.get_model_object(path), (ref.hook, ref.index)))
    return m


def identity_blocks(model, hooks):
    """A clone of model whose listed (hook name, index) blocks are identity, by ComfyUI's own hook."""
    m = model.clone()
    for name, i in hooks:
        def skip(args, extra, name=name):
            return {"img": args["img"]} if name == "single_block" else {"img": args["img"], "txt": args["txt"]}
        m.set_model_patch_replace(skip, "dit", name, i)
    return m


def last_record(model):
    return model.model_options["transformer_options"]["elastic_dit"].last_record


def conds_rows(conds, rows):
    """A [[context, extras], ...] cond list sliced to some batch rows."""
    out = []
    for ctx, extra in conds:
        e = {k: (v[rows] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in extra.items()}
        out.append([ctx[rows], e])
    return out
