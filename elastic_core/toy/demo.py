"""`elastic-dit demo`: dense vs E-DiT on the toy model, per sample of rising complexity.

Prints complexity, executed compute, PSNR against the dense output and against the closest true
render; writes the heatmap of the most complex sample (the widget's look) and an image grid (top
dense, middle E-DiT, bottom the true render closest to the E-DiT sample).

Wall time: dense and elastic are timed interleaved, `repeats` times each, and the median per method
is compared; the spread over the repeats is printed beside it. At this model size (D = 96, 70
tokens) a block is a few hundred microseconds of mostly per-operation overhead on a CPU, so wall
time follows compute only loosely; the compute column is the measure that carries to real models.
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch

from ..config import ElasticConfig
from ..heatmap import payload, picture
from ..draw import save_png
from .metrics import psnr
from .pipeline import generate, load_dit, load_toy_routers
from .world import WorldSpec, batch, fit


def _to_rgb(x: torch.Tensor, scale: int = 3) -> np.ndarray:
    img = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return img.repeat(scale, 0).repeat(scale, 1)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def wall_ratio(dense_fn, elastic_fn, repeats: int) -> dict:
    """Interleaved timing: dense, elastic, dense, elastic, ... -> medians, their ratio and the spread."""
    td, te = [], []
    for _ in range(repeats):
        td.append(_timed(dense_fn))
        te.append(_timed(elastic_fn))
    ratios = sorted(d / e for d, e in zip(td, te))
    return {"dense_s": statistics.median(td), "elastic_s": statistics.median(te),
            "speedup": statistics.median(td) / statistics.median(te), "ratio_range": [ratios[0], ratios[-1]]}


def run_demo(samples: int = 8, steps: int = 20, out_dir: str = "demo-output", seed: int = 0,
             config: ElasticConfig | None = None, repeats: int = 5) -> dict:
    torch.manual_seed(seed)
    model, ckpt = load_dit(), load_toy_routers()
    config = config or ckpt.meta.elastic_config()
    cs = np.linspace(0.0, 1.0, samples)
    _, toks, _ = batch(samples, np.random.default_rng(seed), WorldSpec(size=model.cfg.image), complexity=cs)
    tok = torch.from_numpy(toks)
    noise = torch.randn(samples, 3, model.cfg.image, model.cfg.image, generator=torch.Generator().manual_seed(seed))
    rows, dense_imgs, fast_imgs, true_imgs, last = [], [], [], [], None
    for i in range(samples):
        t, z = tok[i:i + 1], noise[i:i + 1]
        dense, _, _ = generate(model, t, z, steps)
        fast, rec, _ = generate(model, t, z, steps, ckpt.routers, config)
        truth = torch.from_numpy(fit(fast[0].numpy(), toks[i]))[None]
        tot = rec.totals()
        rows.append({"sample": i, "complexity": float(cs[i]), "executed_fraction": tot["executed_fraction"],
                     "skipped": tot["skipped"], "reused": tot["reused"], "mean_width": tot["mean_width"],
                     "psnr_db": psnr(fast, dense), "true_psnr_db": psnr(fast, truth),
                     "dense_true_psnr_db": psnr(dense, torch.from_numpy(fit(dense[0].numpy(), toks[i]))[None])})
        dense_imgs.append(dense[0])
        fast_imgs.append(fast[0])
        true_imgs.append(truth[0])
        last = rec
    generate(model, tok, noise, 2)  # warm-up before timing
    wall = wall_ratio(lambda: generate(model, tok, noise, steps), lambda: generate(model, tok, noise, steps,
                                                                                ckpt.routers, config), repeats)
    os.makedirs(out_dir, exist_ok=True)
    grid = np.concatenate([np.concatenate([_to_rgb(x) for x in row], axis=1)
                           for row in (dense_imgs, fast_imgs, true_imgs)], axis=0)
    save_png(os.path.join(out_dir, "grid.png"), grid)
    # `last` ran alone (sample index 0 of its own batch): the title names it as the table does
    shown = {"sample": samples - 1, "label": f"sample {samples - 1} (complexity {cs[-1]:.2f})"}
    save_png(os.path.join(out_dir, "heatmap.png"), picture(payload(last), label=shown["label"]))
    return {"rows": rows, "heatmap": shown, "steps": steps, "config": config.to_dict(), "out_dir": out_dir, "wall": wall,
            "repeats": repeats, "guidance": model.cfg.guidance, "threads": torch.get_num_threads()}


def format_demo(r: dict) -> str:
    c = r["config"]
    lines = [f"E-DiT on the toy model ({r['steps']} steps, guidance {r['guidance']:g}, tau {c['tau']}, delta "
             f"{c['delta']}, K {c['max_reuse']}, width {'on' if c['width'] else 'off'}); dense vs elastic from the "
             "same noise",
             f"{'sample':>6} {'complexity':>10} {'compute':>8} {'skipped':>8} {'reused':>7} {'width':>6} "
             f"{'PSNR dB':>8} {'true dB':>8} {'dense true dB':>14}"]
    for x in r["rows"]:
        lines.append(f"{x['sample']:>6} {x['complexity']:>10.2f} {x['executed_fraction']:>8.0%} {x['skipped']:>8.0%} "
                     f"{x['reused']:>7.0%} {x['mean_width']:>6.2f} {x['psnr_db']:>8.1f} {x['true_psnr_db']:>8.1f} "
                     f"{x['dense_true_psnr_db']:>14.1f}")
    rows = r["rows"]
    mean = lambda k: sum(x[k] for x in rows) / len(rows)  # noqa: E731
    lines.append(f"{'mean':>6} {'':>10} {mean('executed_fraction'):>8.0%} {mean('skipped'):>8.0%} "
                 f"{mean('reused'):>7.0%} {mean('mean_width'):>6.2f} {mean('psnr_db'):>8.1f} "
                 f"{mean('true_psnr_db'):>8.1f} {mean('dense_true_psnr_db'):>14.1f}"
                 f"   ({1 / mean('executed_fraction'):.2f}x less compute)")
    w = r["wall"]
    lo, hi = w["ratio_range"]
    lines.append(f"wall time, all samples in one batch, {r['repeats']} interleaved runs each: dense {w['dense_s']:.2f} s, "
                 f"E-DiT {w['elastic_s']:.2f} s (medians): {w['speedup']:.2f}x, runs {lo:.2f}x to {hi:.2f}x. "
                 "Indicative only: at this size per-operation overhead, not FLOPs, sets CPU time.")
    lines.append(f"wrote {os.path.join(r['out_dir'], 'grid.png')} (top dense, middle E-DiT, bottom the closest true "
                 f"render) and {os.path.join(r['out_dir'], 'heatmap.png')} (sample {len(r['rows']) - 1}, the most complex)")
    return "\n".join(lines)
