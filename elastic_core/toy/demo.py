"""`elastic-dit demo`: dense vs E-DiT on the toy model, per sample of rising complexity.

Prints complexity, executed compute, wall speedup and PSNR against the dense output; writes the
heatmap of the most complex sample (the widget's look) and an image grid (top dense, bottom E-DiT).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..config import ElasticConfig
from ..heatmap import payload, render
from ..png import write_png
from .metrics import psnr
from .pipeline import generate, load_dit, load_toy_routers
from .world import WorldSpec, batch


def _to_rgb(x: torch.Tensor, scale: int = 3) -> np.ndarray:
    img = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return img.repeat(scale, 0).repeat(scale, 1)


def run_demo(samples: int = 8, steps: int = 20, out_dir: str = "demo-output", seed: int = 0,
             config: ElasticConfig | None = None) -> dict:
    torch.manual_seed(seed)
    model, ckpt = load_dit(), load_toy_routers()
    config = config or ckpt.meta.elastic_config()
    rng = np.random.default_rng(seed)
    cs = np.linspace(0.0, 1.0, samples)
    _, toks, _ = batch(samples, rng, WorldSpec(size=model.cfg.image), complexity=cs)
    rows, dense_imgs, fast_imgs, records = [], [], [], []
    for i in range(samples):
        tok = torch.from_numpy(toks[i:i + 1])
        noise = torch.randn(1, 3, model.cfg.image, model.cfg.image, generator=torch.Generator().manual_seed(seed + i))
        generate(model, tok, noise, 2)  # warm-up, so that the first sample's timing is fair
        dense, _, t_dense = generate(model, tok, noise, steps)
        fast, rec, t_fast = generate(model, tok, noise, steps, ckpt.routers, config)
        tot = rec.totals()
        rows.append({"sample": i, "complexity": float(cs[i]), "executed_fraction": tot["executed_fraction"],
                     "skipped": tot["skipped"], "reused": tot["reused"], "mean_width": tot["mean_width"],
                     "wall_dense_s": t_dense, "wall_elastic_s": t_fast, "wall_speedup": t_dense / t_fast,
                     "psnr_db": psnr(fast, dense)})
        dense_imgs.append(dense[0])
        fast_imgs.append(fast[0])
        records.append(rec)
    os.makedirs(out_dir, exist_ok=True)
    grid = np.concatenate([np.concatenate([_to_rgb(x) for x in row], axis=1) for row in (dense_imgs, fast_imgs)], axis=0)
    write_png(os.path.join(out_dir, "grid.png"), grid)
    heat = render(payload(records[-1]), 0, cell=(16, 12))
    write_png(os.path.join(out_dir, "heatmap.png"), heat.repeat(2, 0).repeat(2, 1))
    return {"rows": rows, "steps": steps, "config": config.to_dict(), "out_dir": out_dir}


def format_demo(r: dict) -> str:
    lines = [f"E-DiT on the toy model ({r['steps']} steps, tau {r['config']['tau']}, delta {r['config']['delta']}, "
             f"K {r['config']['max_reuse']}); dense vs elastic from the same noise",
             f"{'sample':>6} {'complexity':>10} {'compute':>8} {'skipped':>8} {'reused':>7} {'width':>6} "
             f"{'speedup':>8} {'PSNR dB':>8}"]
    for x in r["rows"]:
        lines.append(f"{x['sample']:>6} {x['complexity']:>10.2f} {x['executed_fraction']:>8.0%} {x['skipped']:>8.0%} "
                     f"{x['reused']:>7.0%} {x['mean_width']:>6.2f} {x['wall_speedup']:>7.2f}x {x['psnr_db']:>8.1f}")
    rows = r["rows"]
    mean = lambda k: sum(x[k] for x in rows) / len(rows)  # noqa: E731
    lines.append(f"{'mean':>6} {'':>10} {mean('executed_fraction'):>8.0%} {mean('skipped'):>8.0%} "
                 f"{mean('reused'):>7.0%} {mean('mean_width'):>6.2f} {mean('wall_speedup'):>7.2f}x {mean('psnr_db'):>8.1f}"
                 f"   ({1 / mean('executed_fraction'):.2f}x less compute)")
    lines.append(f"wrote {os.path.join(r['out_dir'], 'grid.png')} (top dense, bottom E-DiT) and "
                 f"{os.path.join(r['out_dir'], 'heatmap.png')} (the most complex sample)")
    return "\n".join(lines)
