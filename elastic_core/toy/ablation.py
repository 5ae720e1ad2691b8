"""`elastic-dit bench --toy`: the paper's ablation (Table 4) in miniature, on the built-in toy model.

Every method samples the same test set (complexity from 0 to 1, one fixed noise per sample) and is
compared with the dense output from the same noise. Methods:
  dense | E-DiT skip only | skip + width | skip + width + cache (the full method)
  static: the same blocks removed and the same MLP width for every sample and step, at the full
          method's compute (evenly spaced blocks dropped, first and last kept)
  first-block cache: training-free (as FBCache / TeaCache): when block 0's residual changed little
          since the last step, reuse the residual of all later blocks; threshold set to the full
          method's compute
Samples run one at a time (batch 1), so wall times compare like for like.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ElasticConfig
from .metrics import psnr, spearman, ssim
from .model import ToyDiT, sample
from .pipeline import generate, load_dit, load_toy_routers
from .world import WorldSpec, batch


@dataclass
class Result:
    name: str
    images: torch.Tensor  # [N, 3, S, S]
    compute: list[float]  # executed fraction of dense, per sample
    wall_s: float
    note: str = ""


def test_set(model: ToyDiT, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    cs = np.linspace(0.0, 1.0, n)
    _, toks, _ = batch(n, np.random.default_rng(seed), WorldSpec(size=model.cfg.image), complexity=cs)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 3, model.cfg.image, model.cfg.image, generator=g)
    return torch.from_numpy(toks), noise, cs


def _each(fn, toks, noise) -> tuple[torch.Tensor, list, float]:
    outs, infos, wall = [], [], 0.0
    for i in range(len(toks)):
        t0 = time.perf_counter()
        out, info = fn(toks[i:i + 1], noise[i:i + 1])
        wall += time.perf_counter() - t0
        outs.append(out)
        infos.append(info)
    return torch.cat(outs), infos, wall


def run_dense(model, toks, noise, steps) -> Result:
    imgs, _, wall = _each(lambda t, z: (generate(model, t, z, steps)[0], None), toks, noise)
    return Result("dense", imgs, [1.0] * len(toks), wall)


def run_elastic(name, model, routers, config: ElasticConfig, toks, noise, steps) -> tuple[Result, list]:
    def one(t, z):
        out, rec, _ = generate(model, t, z, steps, routers, config)
        return out, rec
    imgs, recs, wall = _each(one, toks, noise)
    return Result(name, imgs, [r.totals()["executed_fraction"] for r in recs], wall), recs


def _block_cost(model: ToyDiT, width: float) -> float:
    spec, tokens = model.specs()[0], {"img": (model.cfg.image // model.cfg.patch) ** 2, "txt": model.cfg.tokens}
    return spec.attn_flops(tokens) + spec.mlp_flops(tokens, width)


def static_plan(model: ToyDiT, target: float, widths) -> tuple[set[int], float, float]:
    """Dropped blocks (evenly spaced, first and last kept) and one width whose compute is closest to target."""
    n, full = len(model.blocks), _block_cost(model, 1.0)
    best = None
    for k in range(0, n - 1):
        drop = set(int(round(x)) for x in np.linspace(1, n - 2, k)) if k else set()
        for w in widths:
            frac = (n - len(drop)) * _block_cost(model, w) / (n * full)
            if best is None or abs(frac - target) < abs(best[2] - target):
                best = (drop, w, frac)
    return best


def run_static(model, toks, noise, steps, drop: set[int], width: float, frac: float) -> Result:
    widths = [width] * len(model.blocks)

    def one(t, z):
        with torch.inference_mode():
            return sample(lambda x, tt, i: model(x, tt, t, widths=widths, skip=drop), z, steps), None
    imgs, _, wall = _each(one, toks, noise)
    return Result("static (same compute)", imgs, [frac] * len(toks), wall,
                  f"{len(drop)} of {len(model.blocks)} blocks removed, width {width:g}")


def first_block_cache(model: ToyDiT, tokens, noise, steps: int, threshold: float) -> tuple[torch.Tensor, float]:
    """Training-free first-block cache. -> images, executed fraction (all blocks at full width)."""
    state = {"prev": None, "rest": None, "ran": 0}
    n = len(model.blocks)

    def velocity(x, t, i):
        img, txt, vec = model.embed(x, t, tokens)
        img1, txt1 = model.blocks[0](img, txt, vec)
        r0 = img1 - img
        prev = state["prev"]
        state["prev"] = r0
        if prev is not None and state["rest"] is not None:
            change = ((r0 - prev).abs().mean() / prev.abs().mean().clamp_min(1e-8)).item()
            if change < threshold:
                state["ran"] += 1
                return model.head(img1 + state["rest"], vec)
        h, c = img1, txt1
        for b in model.blocks[1:]:
            h, c = b(h, c, vec)
        state["rest"] = h - img1
        state["ran"] += n
        return model.head(h, vec)

    with torch.inference_mode():
        out = sample(velocity, noise, steps)
    return out, state["ran"] / (n * steps)


def run_fbcache(model, toks, noise, steps, target: float) -> Result:
    """Bisection on the threshold until the mean executed compute meets the target."""
    def trial(th):
        return _each(lambda t, z: first_block_cache(model, t, z, steps, th), toks, noise)
    lo, hi, best = 0.0, 4.0, None
    for _ in range(10):
        mid = (lo + hi) / 2
        imgs, fracs, wall = trial(mid)
        mean = float(np.mean(fracs))
        if best is None or abs(mean - target) < abs(np.mean(best[1]) - target):
            best = (imgs, fracs, wall, mid)
        if mean > target:
            lo = mid  # too much compute: allow more reuse
        else:
            hi = mid
    imgs, fracs, wall, th = best
    return Result("first-block cache (same compute)", imgs, list(fracs), wall, f"threshold {th:.3f}")


def block_skip_rates(recs) -> list[float]:
    """Share of (sample, step) decisions that skipped each block."""
    n = len(recs[0].blocks)
    skip, total = np.zeros(n), np.zeros(n)
    for r in recs:
        ev = r.events
        for b, a in zip(ev["block"], ev["action"]):
            total[b] += 1
            skip[b] += a == 0
    return list(skip / np.maximum(total, 1))


def run_ablation(samples: int = 16, steps: int = 20, seed: int = 1) -> dict:
    torch.manual_seed(seed)
    model, ckpt = load_dit(), load_toy_routers()
    base = ckpt.meta.elastic_config()
    toks, noise, cs = test_set(model, samples, seed)
    generate(model, toks[:1], noise[:1], 2, ckpt.routers, base)  # warm-up
    dense = run_dense(model, toks, noise, steps)
    rows = [dense]
    for name, cfg in (("E-DiT: skip only", base.with_(width=False, cache=False)),
                      ("E-DiT: skip + width", base.with_(cache=False)),
                      ("E-DiT: skip + width + cache", base)):
        res, recs = run_elastic(name, model, ckpt.routers, cfg, toks, noise, steps)
        rows.append(res)
    full, full_recs = rows[-1], recs  # the last variant is the full method
    target = float(np.mean(full.compute))
    drop, width, frac = static_plan(model, target, ckpt.routers.config.widths)
    rows.append(run_static(model, toks, noise, steps, drop, width, frac))
    rows.append(run_fbcache(model, toks, noise, steps, target))
    table = []
    for r in rows:
        table.append({"method": r.name, "compute": float(np.mean(r.compute)), "compute_reduction": 1 / float(np.mean(r.compute)),
                      "wall_s": r.wall_s, "wall_speedup": dense.wall_s / r.wall_s,
                      "psnr_db": psnr(r.images, dense.images), "ssim": ssim(r.images, dense.images), "note": r.note})
    rates = block_skip_rates(full_recs)
    return {"samples": samples, "steps": steps, "config": base.to_dict(), "table": table,
            "spearman_compute_complexity": spearman(cs, full.compute),
            "per_sample": [{"complexity": float(c), "compute": float(f)} for c, f in zip(cs, full.compute)],
            "skip_rate_per_block": rates,
            "skip_rate_first_last": [rates[0], rates[-1]],
            "skip_rate_middle": float(np.mean(rates[1:-1]))}


def format_ablation(r: dict) -> str:
    lines = [f"Toy-world ablation (paper Table 4 in miniature): {r['samples']} samples of complexity 0..1, "
             f"{r['steps']} euler steps, batch 1, quality against the dense output from the same noise",
             f"{'method':<34} {'compute':>8} {'reduction':>9} {'wall s':>7} {'speedup':>8} {'PSNR dB':>8} {'SSIM':>6}"]
    for x in r["table"]:
        lines.append(f"{x['method']:<34} {x['compute']:>8.1%} {x['compute_reduction']:>8.2f}x {x['wall_s']:>7.2f} "
                     f"{x['wall_speedup']:>7.2f}x {x['psnr_db']:>8.1f} {x['ssim']:>6.3f}" + (f"  ({x['note']})" if x["note"] else ""))
    t = {x["method"]: x for x in r["table"]}
    full, static, fb = t["E-DiT: skip + width + cache"], t["static (same compute)"], t["first-block cache (same compute)"]
    ok = lambda b: "met" if b else "MISSED"  # noqa: E731
    lines += [
        "",
        f"targets: compute reduction >= 1.8x: {full['compute_reduction']:.2f}x ({ok(full['compute_reduction'] >= 1.8)}); "
        f"beats static at matched compute: {full['psnr_db']:.1f} vs {static['psnr_db']:.1f} dB "
        f"({ok(full['psnr_db'] > static['psnr_db'])}); beats first-block cache: {full['psnr_db']:.1f} vs "
        f"{fb['psnr_db']:.1f} dB ({ok(full['psnr_db'] > fb['psnr_db'])})",
        f"compute vs complexity: Spearman {r['spearman_compute_complexity']:.2f} "
        f"({ok(r['spearman_compute_complexity'] >= 0.5)}, target >= 0.5)",
        f"skip rate: first block {r['skip_rate_first_last'][0]:.0%}, last block {r['skip_rate_first_last'][1]:.0%}, "
        f"middle blocks {r['skip_rate_middle']:.0%}; per block: " + " ".join(f"{x:.0%}" for x in r["skip_rate_per_block"]),
    ]
    return "\n".join(lines)
