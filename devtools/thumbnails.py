"""Make the template browser's thumbnails: workflows/<name>.jpg for every workflows/<name>.json.

ComfyUI's template browser shows `<pack>/workflows/<name>.json` with the picture `<name>.jpg` beside it.
Each thumbnail is a short title over the gate heatmap of a real elastic run of the workflow's own model
family at its real block count (Qwen-Image 60 blocks, Qwen-Image-Edit = Qwen-Image's 60 with a reference
latent, Flux.1 19 + 38, Flux.2-dev 8 + 48, Z-Image 30, Wan 2.1 1.3B 30, Hunyuan3D 2.1 21): ComfyUI's own
model class, tiny width and random weights, random routers (no real weights ship), sampled through
comfy.sample with Apply Elastic DiT's hooks. From a git checkout, with a ComfyUI's Python:

    python devtools/thumbnails.py [--comfyui PATH] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.comfy_boot import boot, find_comfyui  # noqa: E402

SIZE = (400, 300)  # width, height
# workflow -> (title, family, seed): the family's run at its real depth; a seed per workflow, so no two match
WORKFLOWS = {
    "qwen-image-e-dit": ("Qwen-Image with the released E-DiT checkpoint", "qwen", 1),
    "qwen-image-e-dit-lora": ("Your Qwen-Image + the release as routers and a LoRA", "qwen", 2),
    "flux-dev-elastic": ("FLUX.1-dev with a router file", "flux", 3),
    "flux-dev-train-router": ("FLUX.1-dev: train routers, then sample", "flux", 4),
    "flux-dev-train-router-lora": ("FLUX.1-dev: train routers and a LoRA", "flux", 5),
    "hunyuan3d-elastic": ("Hunyuan3D 2.1: image to 3D mesh", "hunyuan3d21", 6),
    "flux2-elastic": ("FLUX.2-dev with a router file", "flux2", 7),
    "z-image-elastic": ("Z-Image with a router file", "zimage", 8),
    "qwen-image-edit-elastic": ("Qwen-Image-Edit with a router file", "qwen_edit", 9),
    "wan-elastic": ("Wan 2.1 text to video, elastic", "wan", 10),
}
FAMILY = {"qwen": "Qwen-Image, 60 blocks", "flux": "Flux.1, 19 + 38 blocks",
          "hunyuan3d21": "Hunyuan3D 2.1, 21 blocks", "flux2": "Flux.2-dev, 8 + 48 blocks",
          "zimage": "Z-Image, 30 layers", "qwen_edit": "Qwen-Edit, 60 blocks + ref",
          "wan": "Wan 2.1 1.3B, 30 blocks"}
# family -> (tiny_models kind, its real depth in tiny_models' dims); hunyuan3d21 is built by build_3d
DEPTH = {"qwen": ("qwen", {"layers": 60}), "qwen_edit": ("qwen", {"layers": 60}),
         "flux": ("flux", {"depth": 19, "single": 38}), "flux2": ("flux2", {"depth": 8, "single": 48}),
         "zimage": ("zimage", {"layers": 30}), "wan": ("wan", {"layers": 30})}


def record_of(pack, family: str, seed: int, steps: int = 20):
    """The run record of one elastic run of a tiny random-weight model of `family` at its real depth."""
    import torch

    from devtools import tiny_models as tiny
    if family == "hunyuan3d21":
        model = tiny.build_3d("hunyuan3d21", seed=seed, depth=21, moe=6)
    else:
        kind, dims = DEPTH[family]
        model = tiny.build(kind, seed=seed, **dims)
    ckpt = tiny.make_routers(pack, model, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random routers: some blocks closed, some open, some near tau, moving with the input
        for r in ckpt.routers.routers:
            r.out[2].bias.fill_(float(torch.randn(1, generator=g)) * 1.5)
            r.out[2].weight.normal_(0.0, 0.3, generator=g)
            r.width_head.bias.copy_(torch.randn(r.width_head.bias.shape, generator=g))
    config = pack.elastic_core.config.ElasticConfig(delta=0.2, max_reuse=3, cache_start=0.2)
    patched = pack.nodes.patch.apply_elastic(model, ckpt, pack.elastic_core.policy.Policy(config))
    if family == "hunyuan3d21":
        tiny.sample_3d(patched, cfg=3.0, steps=steps, seed=seed)
    elif family == "qwen_edit":
        sample_edit(tiny, patched, steps, seed)
    else:
        tiny.sample(patched, DEPTH[family][0], cfg=3.0, steps=steps, seed=seed)
    return patched.model_options["transformer_options"][pack.nodes.patch.HOLDER_KEY].last_record


def sample_edit(tiny, model, steps: int, seed: int):
    """Qwen-Image-Edit as ComfyUI runs it: Qwen-Image with a reference latent [1, 16, 1, 16, 16] in both
    conditionings (2509's "index" method: its tokens join the image stream after the noisy image's)."""
    import comfy.sample
    import torch
    lat = tiny.latent("qwen")  # [1, 16, 1, 16, 16]
    pos, neg = tiny.conds("qwen", seed=seed, ctx=tiny.context_dim(model))
    ref = torch.randn(lat.shape, generator=torch.Generator().manual_seed(seed + 100))
    for c in (pos, neg):
        c[0][1].update(reference_latents=[ref], reference_latents_method="index")
    noise = comfy.sample.prepare_noise(lat, seed)
    return comfy.sample.sample(model, noise, steps, 3.0, "euler", "simple", pos, neg, lat, seed=seed,
                               disable_pbar=True)


def thumbnail(pack, title: str, family: str, record):
    """The title (wrapped to fit, two lines at most), the heatmap scaled into the rest, a caption."""
    import importlib

    from PIL import Image, ImageDraw
    heatmap, draw = (importlib.import_module(f"{pack.__name__}.elastic_core.{m}") for m in ("heatmap", "draw"))
    w, h = SIZE
    img = Image.new("RGB", SIZE, (21, 21, 21))
    d = ImageDraw.Draw(img)
    big, small = draw.font(22), draw.font(12)
    lines = draw.wrap(d, title, big, w - 16, 2)
    for i, line in enumerate(lines):
        d.text((8, 6 + i * 26), line, fill=(235, 235, 235), font=big)
    top, foot = 12 + 26 * len(lines), 20
    t = record.totals()
    d.text((8, h - foot + 2), draw.fit(d, f"{FAMILY[family]} (tiny, random): skipped {t['skipped']:.0%}, reused "
                                       f"{t['reused']:.0%}", small, w - 16, keep="start"), fill=(190, 190, 190), font=small)
    # drawn with roomy cells, then scaled down smoothly: 60 rows in ~210 px would leave no room for the marks
    grid = Image.fromarray(heatmap.render(heatmap.payload(record), 0, cell=(20, 10), legend=0))  # rows: blocks
    grid = grid.resize((w - 16, h - top - foot - 6), Image.LANCZOS)
    img.paste(grid, (8, top))
    return img


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", default=None, help="ComfyUI checkout (default: as the tests find it)")
    ap.add_argument("--only", nargs="+", choices=sorted(WORKFLOWS), default=None, help="remake only these")
    a = ap.parse_args(argv)
    path, how = (a.comfyui, "--comfyui") if a.comfyui else find_comfyui()
    if not path:
        raise SystemExit(how)
    _, pack = boot(path)
    missing = sorted({os.path.splitext(f)[0] for f in os.listdir(os.path.join(ROOT, "workflows"))
                      if f.endswith(".json")} - set(WORKFLOWS))
    if missing:
        raise SystemExit(f"no title and family for workflows {missing}: add them to WORKFLOWS")
    for name, (title, family, seed) in WORKFLOWS.items():
        if a.only and name not in a.only:
            continue
        out = os.path.join(ROOT, "workflows", name + ".jpg")
        thumbnail(pack, title, family, record_of(pack, family, seed)).save(out, quality=88)
        print(f"wrote {os.path.relpath(out, ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
