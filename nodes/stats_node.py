"""Elastic DiT Stats: the last run's heatmap as an IMAGE (the widget's palette) and its record as JSON.

Place it after the KSampler: `model` is the Apply node's output (it carries the run record), and
`samples`, the KSampler's output, makes it run once sampling is done.
"""
from __future__ import annotations

import numpy as np
import torch

from ..elastic_core import heatmap
from .patch import HOLDER_KEY

STREAMS = ["cond", "uncond", "cond2", "uncond2", "cond3", "uncond3"]  # conds of one type count up (run_state)


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


class ElasticDiTStats:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The output of Apply Elastic DiT (it carries the last run's record)."}),
            "samples": ("LATENT", {"tooltip": "The KSampler's output: makes this node run after sampling."}),
            "stream": (STREAMS, {"default": "cond", "tooltip": "Which guidance half to show (cond2, ...: a second "
                                 "prompt of that type, e.g. from Conditioning Combine)."}),
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
        img = heatmap.picture(pl, _view_index(pl, stream, sample))  # [H, W, 3] uint8
        image = torch.from_numpy(img.astype(np.float32) / 255.0)[None]  # [1, H, W, 3]
        return (image, record.to_json())
