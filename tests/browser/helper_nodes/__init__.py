"""Test-only ComfyUI custom node pack for the browser end-to-end test (never shipped).

These nodes stand in for what a real graph gets from model files we cannot ship: a tiny random-weight
Flux MODEL built from ComfyUI's own comfy.ldm classes (devtools/tiny_models.py), routers made for it
with some blocks forced to skip, some into the reuse band and some to reduced MLP width, and
conditioning of the tiny model's shapes. The server loads this folder as a custom node next to the
Elastic DiT pack; the routers are built with the LOADED pack's own modules, so the Apply node's
`isinstance(router, RouterCheckpoint)` sees its own class.
"""
from __future__ import annotations

import importlib.util
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))
CATEGORY = "Elastic DiT tests"
TINY = dict(depth=3, single=5)  # 8 blocks: 3 double + 5 single
# block index -> forced router decision (the rest stay open at full width: p ~ 0.7)
FORCED = {1: dict(p=0.2), 2: dict(width_idx=1), 3: dict(p=0.505), 5: dict(p=0.3), 6: dict(width_idx=0),
          7: dict(p=0.505)}


def _tiny_models():
    """devtools/tiny_models.py, loaded by path (the repo root is not put on the server's sys.path: its
    `nodes` and `tests` folders would shadow ComfyUI's)."""
    name = "elastic_dit_browser_test_tiny_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "devtools", "tiny_models.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _pack():
    """The Elastic DiT pack module as ComfyUI's loader imported it (found by the path of its __init__)."""
    want = os.path.join(REPO_ROOT, "__init__.py")
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and os.path.realpath(f) == want and getattr(mod, "NODE_CLASS_MAPPINGS", None):
            return mod
    raise RuntimeError(f"the Elastic DiT pack ({REPO_ROOT}) is not loaded in this ComfyUI")


def _logit(p):
    return _tiny_models().logit(p)


class ElasticDiTTestTinyModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = CATEGORY

    def build(self, seed):
        return (_tiny_models().build("flux", seed=seed, **TINY),)


class ElasticDiTTestRouters:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("ELASTIC_ROUTER",)
    FUNCTION = "make"
    CATEGORY = CATEGORY

    def make(self, model):
        import torch
        ckpt = _tiny_models().make_routers(_pack(), model)
        with torch.no_grad():
            self._force(ckpt)
        return (ckpt,)

    @staticmethod
    def _force(ckpt):
        for i, how in FORCED.items():
            r = ckpt.routers[i]
            if "p" in how:
                r.out[2].weight.zero_()
                r.out[2].bias.fill_(_logit(how["p"]))
            if "width_idx" in how:
                r.width_head.weight.zero_()
                r.width_head.bias.fill_(-10.0)
                r.width_head.bias[how["width_idx"]] = 10.0


class ElasticDiTTestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "make"
    CATEGORY = CATEGORY

    def make(self, model, seed):
        ctx = model.get_model_object("diffusion_model").txt_in.in_features
        return _tiny_models().conds("flux", 1, seed, 8, ctx)


NODE_CLASS_MAPPINGS = {
    "ElasticDiTTestTinyModel": ElasticDiTTestTinyModel,
    "ElasticDiTTestRouters": ElasticDiTTestRouters,
    "ElasticDiTTestConditioning": ElasticDiTTestConditioning,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ElasticDiTTestTinyModel": "Tiny Flux model (test)",
    "ElasticDiTTestRouters": "Tiny Flux routers (test)",
    "ElasticDiTTestConditioning": "Tiny Flux conditioning (test)",
}
