"""Apply Elastic DiT: a MODEL that skips, reuses and narrows blocks as its routers say.

Slider defaults reproduce the authors' released code for their checkpoint (tau 0.5, band 0.015,
K 10, caching from 50 % of the schedule); `preset` switches to the file's own defaults or to one of
the paper's Table-1 settings in one choice.
"""
from __future__ import annotations

import math

from ..elastic_core.checkpoint import RouterCheckpoint
from ..elastic_core.config import PAPER_PRESETS, ElasticConfig
from ..elastic_core.policy import Policy
from .loader_node import ROUTER_TYPE
from .patch import apply_elastic

PRESETS = {
    "sliders": None,
    "router file defaults": "file",
    "paper: Qwen-Image base": "qwen-image-base",
    "paper: Qwen-Image turbo": "qwen-image-turbo",
    "paper: FLUX.1-dev": "flux-dev",
    "paper: Hunyuan3D-3.0": "hunyuan3d-3.0",
}


FILE_SETS = ("tau", "delta", "max_reuse", "cache_start_percent", "cache_end_percent")  # what "router file defaults" sets


def preset_table() -> dict:
    """For the widget: what each preset sets ({input: value}, or the inputs the router file sets)."""
    out = {}
    for name, key in PRESETS.items():
        if key is None:
            out[name] = {"sets": {}}
        elif key == "file":
            out[name] = {"from_file": list(FILE_SETS)}
        else:
            p = PAPER_PRESETS[key]
            out[name] = {"sets": {"tau": p.tau, "delta": p.delta, "max_reuse": p.max_reuse}}
    return out


def budget_bytes(gb) -> int | None:
    """cache_budget in GB (2^30 bytes) -> bytes for the engine; 0 -> None (no limit)."""
    if isinstance(gb, bool) or not isinstance(gb, (int, float)) or not math.isfinite(gb) or gb < 0:
        raise ValueError(f"Apply Elastic DiT: cache_budget must be a number of GB >= 0 (0 = no limit), got {gb!r}")
    return None if gb == 0 else int(gb * 2**30)


def _f(default, lo, hi, step, tip, slider=True):
    opts = {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tip}
    if slider:
        opts["display"] = "slider"
    return ("FLOAT", opts)


class ElasticDiTApply:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A Qwen-Image, Flux.1, Chroma or Hunyuan3D (2.0, 2.1) model. It is cloned, never changed."}),
                "router": (ROUTER_TYPE, {"tooltip": "Routers from Load Elastic Router, made for this model."}),
                "tau": _f(0.5, 0.0, 1.0, 0.005, "Gate threshold: a block whose gate probability is below tau is "
                          "skipped. Routers whose gates are committed (near 0 or 1) make tau a switch, not a "
                          "dial: to trade compute gradually, move cache_start_percent."),
                "delta": _f(0.015, 0.0, 0.3, 0.005, "Borderline band [tau, tau + delta]: blocks in it reuse their "
                            "cached residual instead of running."),
                "max_reuse": ("INT", {"default": 10, "min": 0, "max": 50, "step": 1, "display": "slider",
                                      "tooltip": "K: at most this many reuses in a row before a block must run again."}),
                "skip_blocks": ("BOOLEAN", {"default": True, "tooltip": "Let routers skip blocks."}),
                "adapt_width": ("BOOLEAN", {"default": True, "tooltip": "Let routers run MLPs at 1/4, 1/2 or 3/4 width."}),
                "cache": ("BOOLEAN", {"default": True, "tooltip": "Reuse residuals of borderline blocks."}),
                "cache_start_percent": _f(0.5, 0.0, 1.0, 0.01, "Caching starts at this point of the noise "
                                          "schedule (0 = first step). The released code starts halfway. The smoothest "
                                          "way to trade compute: earlier = less compute.", False),
                "cache_end_percent": _f(1.0, 0.0, 1.0, 0.01, "Caching stops at this point of the noise schedule.", False),
            },
            "optional": {
                "preset": (list(PRESETS), {"default": "sliders", "tooltip": "Use the sliders, the router file's own "
                                           "defaults, or the paper's Table-1 setting for a model."}),
                "cache_device": (["auto", "cpu"], {"default": "auto", "tooltip": "Where cached residuals live: "
                                 "with the model (fast) or in CPU memory (saves VRAM)."}),
                "cache_budget": _f(1.0, 0.0, 1024.0, 0.25, "GB the residual cache may hold (0 = no limit). Over it, "
                                   "residuals of blocks whose gate is far from the reuse band are dropped, and such a "
                                   "block runs instead of reusing (exact, a little slower). Qwen-Image at 1328x1328 "
                                   "with CFG would hold ~4.9 GB without a limit.", False),
                "authors_activation": ("BOOLEAN", {"default": True, "tooltip": "For router files that ask for it "
                                       "(the authors' released Qwen-Image E-DiT, and files converted from it): run "
                                       "the routed blocks' MLPs (image and text) with the authors' x*sigmoid(1.702x), "
                                       "as their DiT computes. Off: ComfyUI's tanh-GELU (about 1 % apart in the final "
                                       "latent). Other router files: no effect."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with elastic blocks. Sample it with any KSampler.",)
    FUNCTION = "apply"
    CATEGORY = "Elastic DiT"
    DESCRIPTION = "Skips, reuses and narrows DiT blocks per sample and step, as learned routers decide."

    def apply(self, model, router: RouterCheckpoint, tau, delta, max_reuse, skip_blocks, adapt_width, cache,
              cache_start_percent, cache_end_percent, preset="sliders", cache_device="auto", unique_id=None,
              cache_budget=1.0, authors_activation=True):
        if not isinstance(router, RouterCheckpoint):
            raise TypeError(f"router must come from Load Elastic Router, got {type(router).__name__}")
        device = None if cache_device == "auto" else cache_device
        budget = budget_bytes(cache_budget)  # checked first: a bad budget is refused whatever the preset
        chosen = PRESETS.get(preset)
        if chosen == "file":  # the file sets the thresholds and the window: the sliders it greys out are not read
            config = router.meta.elastic_config().with_(skip=skip_blocks, width=adapt_width, cache=cache,
                                                         cache_device=device, cache_budget=budget)
            return (apply_elastic(model, router, Policy(config), node_id=unique_id,
                                  authors_activation=bool(authors_activation)),)
        if cache_start_percent > cache_end_percent:
            raise ValueError(f"cache_start_percent ({cache_start_percent}) must not exceed "
                             f"cache_end_percent ({cache_end_percent})")
        config = ElasticConfig(tau=tau, delta=delta, max_reuse=max_reuse, skip=skip_blocks, width=adapt_width,
                               cache=cache, cache_start=cache_start_percent, cache_end=cache_end_percent,
                               cache_device=device, cache_budget=budget)
        if chosen is not None:
            p = PAPER_PRESETS[chosen]
            config = config.with_(tau=p.tau, delta=p.delta, max_reuse=p.max_reuse)
        return (apply_elastic(model, router, Policy(config), node_id=unique_id,
                              authors_activation=bool(authors_activation)),)
