"""What a LoRA buys E-DiT, measured on the toy world: routers alone (frozen backbone) against routers
+ LoRA at several ranks against full end-to-end training (every backbone weight), each trained by the
same dense-teacher distillation, then sampled with the full method (skip + width + cache) at matched
compute and compared with the ORIGINAL dense model's output from the same noise.

    python -m elastic_core.toy_lora [--steps 300] [--ranks 4 16 64] [--seeds 0 1 2] [--dit FILE]
                                    [--targets 0.4 0.5 0.6] [--samples 24] [--out bench-results/toy_lora.json]
    python -m elastic_core.toy_lora --merge seed0.json seed1.json ... --out all.json

Matched compute: tau is bisected per trained model until the mean executed compute over the test
set meets each target (the cache band delta, K and window are the shipped routers' defaults).
Uses the toy's public functions only: pipeline.load_dit / new_routers / generate, ablation.test_set,
world.batch, metrics.psnr, train.elastic_forward / distill_loss.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch

from .config import ElasticConfig
from .lora import JointTrainer, LoraSet, attach, find_targets, merge
from .train import RouterTrainer, TrainConfig, distill_loss, elastic_forward
from .toy.ablation import test_set
from .toy.metrics import psnr
from .toy.pipeline import generate, load_dit, new_routers
from .toy.world import WorldSpec, batch

ROUTER_LR = 3e-3  # the shipped toy routers' learning rate
BASE = ElasticConfig(tau=0.5, delta=0.05, max_reuse=3, cache_start=0.3, cache_end=1.0)  # the shipped defaults


def distill(teacher, student, routers, rng: np.random.Generator, batch_size: int):
    """L_perf: the elastic student against the ORIGINAL model's dense prediction (same x_t, t, caption)."""
    def fn():
        x0, tok, _ = (torch.from_numpy(a) for a in batch(batch_size, rng, WorldSpec(size=student.cfg.image)))
        t = torch.rand(batch_size)
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * torch.randn_like(x0)
        img, txt, vec = student.embed(xt, t, tok)
        fns = [lambda s, m, b=b: dict(zip(("img", "txt"), b(s["img"], s["txt"], vec, m))) for b in student.blocks]
        out, aux = elastic_forward(routers, fns, [b.hidden for b in student.blocks], {"img": img, "txt": txt}, vec,
                                   0.5, lambda s: [s["txt"], s["img"]])
        with torch.no_grad():
            dense = teacher(xt, t, tok)
        return distill_loss(student.head(out["img"], vec), dense), aux
    return fn


def train(teacher, method: str, rank: int, seed: int, steps: int, batch_size: int, lora_lr: float, e2e_lr: float):
    """-> (student backbone with any LoRA merged, routers, trainable parameter count besides the routers)"""
    torch.manual_seed(seed)
    student = copy.deepcopy(teacher).requires_grad_(False)
    routers = new_routers(student)
    cfg = TrainConfig(steps=steps, lr=ROUTER_LR, rho_g=0.5, rho_w=0.6)
    lora, extra = None, 0
    if method == "lora":
        lora = LoraSet(find_targets((f"blocks.{i}", b) for i, b in enumerate(student.blocks)), rank, seed=seed)
        attach(student, lora)
        trainer, extra = JointTrainer(routers, cfg, lora, lora_lr), lora.num_params()
    elif method == "e2e":
        student.requires_grad_(True)
        trainer = JointTrainer(routers, cfg, student, e2e_lr)
        extra = sum(p.numel() for p in student.parameters())
    else:
        trainer = RouterTrainer(routers, cfg)
    trainer.fit(distill(teacher, student, routers, np.random.default_rng(seed), batch_size))
    if lora is not None:
        merge(student, lora)
    return student.requires_grad_(False).eval(), routers.requires_grad_(False), extra, trainer.history[-1]


def at_compute(student, routers, toks, noise, dense, steps: int, target: float, iters: int = 8) -> dict:
    """Bisect tau until the mean executed compute meets `target`; PSNR against the dense images there."""
    lo, hi, best = 0.0, 1.0, None
    for _ in range(iters):
        tau = (lo + hi) / 2
        imgs, rec, _ = generate(student, toks, noise, steps, routers, BASE.with_(tau=tau))
        frac = rec.totals()["executed_fraction"]
        if best is None or abs(frac - target) < abs(best["compute"] - target):
            best = {"tau": tau, "compute": frac, "psnr_db": psnr(imgs, dense)}
        lo, hi = (tau, hi) if frac > target else (lo, tau)  # more compute than wanted: raise tau (skip more)
    return best


def run(steps=300, ranks=(4, 16, 64), seeds=(0, 1, 2), targets=(0.4, 0.5, 0.6), samples=24, sample_steps=20,
        batch_size=16, lora_lr=1e-3, e2e_lr=3e-4, dit=None, log=print) -> dict:
    teacher = (load_dit(dit) if dit else load_dit()).requires_grad_(False)
    toks, noise, _ = test_set(teacher, samples, seed=1)
    dense, _, _ = generate(teacher, toks, noise, sample_steps)
    methods = [("routers only", "routers", 0)] + [(f"routers + LoRA r{r}", "lora", r) for r in ranks] + \
              [("end to end", "e2e", 0)]
    rows = []
    for name, method, rank in methods:
        for seed in seeds:
            t0 = time.perf_counter()
            student, routers, extra, last = train(teacher, method, rank, seed, steps, batch_size, lora_lr, e2e_lr)
            native, _, _ = generate(student, toks, noise, sample_steps, routers, BASE)
            points = [at_compute(student, routers, toks, noise, dense, sample_steps, t) for t in targets]
            row = {"method": name, "seed": seed, "rank": rank, "trained_params": extra, "loss": last["loss"],
                   "perf": last["perf"], "train_s": time.perf_counter() - t0, "points": points}
            rows.append(row)
            log(f"{name:<22} seed {seed}: " + ", ".join(f"{p['compute']:.0%} -> {p['psnr_db']:.1f} dB" for p in points)
                + f"  (distill loss {last['perf']:.4f}, {row['train_s']:.0f} s)")
    return {"steps": steps, "batch": batch_size, "router_lr": ROUTER_LR, "lora_lr": lora_lr, "e2e_lr": e2e_lr,
            "samples": samples, "sample_steps": sample_steps, "targets": list(targets), "seeds": list(seeds),
            "config": BASE.to_dict(), "rows": rows, "summary": summarize(rows, targets)}


def summarize(rows: list[dict], targets) -> list[dict]:
    out = []
    for name in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == name]
        for j, t in enumerate(targets):
            v = np.array([r["points"][j]["psnr_db"] for r in rs])
            c = np.array([r["points"][j]["compute"] for r in rs])
            out.append({"method": name, "target": t, "compute": float(c.mean()), "psnr_mean": float(v.mean()),
                        "psnr_std": float(v.std()), "psnr_per_seed": v.tolist(),
                        "trained_params": rs[0]["trained_params"]})
    return out


def merge_results(parts: list[dict]) -> dict:
    """One result from runs of the same settings on different seeds (e.g. one process per seed)."""
    r = dict(parts[0])
    r["rows"] = [row for p in parts for row in p["rows"]]
    r["seeds"] = sorted({row["seed"] for row in r["rows"]})
    r["summary"] = summarize(r["rows"], r["targets"])
    return r


def format_summary(r: dict) -> str:
    lines = [f"toy world, {r['samples']} test scenes, {r['sample_steps']} steps; PSNR vs the original dense output "
             f"(mean +- std over seeds {r['seeds']})",
             f"{'method':<22} {'params':>9} " + " ".join(f"{'@' + format(t, '.0%'):>16}" for t in r["targets"])]
    by = {}
    for s in r["summary"]:
        by.setdefault(s["method"], []).append(s)
    for name, ss in by.items():
        lines.append(f"{name:<22} {ss[0]['trained_params']:>9} " + " ".join(
            f"{s['psnr_mean']:>6.2f} +- {s['psnr_std']:.2f} dB" for s in ss))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m elastic_core.toy_lora", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--targets", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--e2e-lr", type=float, default=3e-4)
    p.add_argument("--dit", default=None, help="the toy DiT to start from (default: the shipped one)")
    p.add_argument("--out", default=os.path.join("bench-results", "toy_lora.json"))
    p.add_argument("--merge", nargs="+", default=None, help="merge these result files (one per seed) into --out")
    a = p.parse_args(argv)
    if a.merge:
        parts = []
        for path in a.merge:
            with open(path) as f:
                parts.append(json.load(f))
        r = merge_results(parts)
    else:
            r = run(a.steps, tuple(a.ranks), tuple(a.seeds), tuple(a.targets), a.samples, lora_lr=a.lora_lr,
                e2e_lr=a.e2e_lr, dit=a.dit, log=lambda s: print(s, flush=True))
    print(format_summary(r))
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(r, f, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
