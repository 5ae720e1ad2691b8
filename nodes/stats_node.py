"""Elastic DiT Stats: the last run's heatmap as an IMAGE (the widget's palette) and its record as JSON.

Place it after the KSampler: `model` is the Apply node's output (it carries the run record), and
`samples`, the KSampler's output, makes it run once sampling is done.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..elastic_core import heatmap
from .patch import HOLDER_KEY

SCALE = 2  # cells of the raster are drawn at 2x so that the picture reads at a glance
LABEL_W, HEAD_H = 150, 34


def _record(model):
    patch = model.model_options.get("transformer_options", {}).get(HOLDER_KEY)
    if patch is None:
        raise ValueError("Elastic DiT Stats: `model` must come from an Apply Elastic DiT node")
    if patch.last_record is None:
        raise ValueError("Elastic DiT Stats: this model has not sampled yet; connect `samples` to the output of "
                         "the KSampler that uses it")
    return patch.last_record


def _view_index(pl: dict, stream: str, sample: int) -> int:
    views = [(v["stream"], v["sample"]) for v in pl["views"]]
    if (stream, sample) not in views:
        have = ", ".join(f"{s} {n}" for s, n in views)
        raise ValueError(f"Elastic DiT Stats: the last run has no {stream} sample {sample}; it has: {have}")
    return views.index((stream, sample))


def picture(pl: dict, view: int) -> Image.Image:
    """The raster heatmap with block names, a title and the summary line."""
    raster = heatmap.render(pl, view)  # [H, W, 3]
    cells = Image.fromarray(raster).resize((raster.shape[1] * SCALE, raster.shape[0] * SCALE), Image.NEAREST)
    img = Image.new("RGB", (LABEL_W + cells.width + 8, HEAD_H + cells.height + 6), heatmap.PALETTE["grid"])
    img.paste(cells, (LABEL_W, HEAD_H))
    d = ImageDraw.Draw(img)
    t, v = pl["summary"], pl["views"][view]
    d.text((6, 4), f"Elastic DiT - {v['stream']} sample {v['sample']} - tau {pl['config'].get('tau')}",
           fill=heatmap.PALETTE["text"])
    d.text((6, 18), f"skipped {t['skipped']:.0%}  reused {t['reused']:.0%}  mean width {t['mean_width']:.2f}  "
                    f"compute {t['executed_fraction']:.0%}  est. {t['estimated_speedup']:.2f}x",
           fill=heatmap.PALETTE["text"])
    ch = 8 * SCALE
    every = max(1, 12 // ch + 1)
    for b, blk in enumerate(pl["blocks"]):
        if b % every == 0:
            d.text((6, HEAD_H + b * ch), blk["name"][-20:], fill=heatmap.PALETTE["text"])
    return img


class ElasticDiTStats:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The output of Apply Elastic DiT (it carries the last run's record)."}),
            "samples": ("LATENT", {"tooltip": "The KSampler's output: makes this node run after sampling."}),
            "stream": (["cond", "uncond"], {"default": "cond", "tooltip": "Which guidance half to show."}),
            "sample": ("INT", {"default": 0, "min": 0, "max": 4096, "tooltip": "Which sample of the batch."}),
        }}

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("heatmap", "record_json")
    OUTPUT_TOOLTIPS = ("Blocks x steps: colour = gate probability, dark = skipped, dot = reused, "
                       "orange bar = MLP width.", "The full run record (JSON, schema elastic-dit/run-record).")
    FUNCTION = "stats"
    CATEGORY = "Elastic DiT"
    DESCRIPTION = "What the routers decided in the last run, as a picture and as JSON."

    def stats(self, model, samples, stream, sample):
        record = _record(model)
        pl = heatmap.payload(record)
        img = picture(pl, _view_index(pl, stream, sample))
        image = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]  # [1, H, W, 3]
        return (image, record.to_json())
