"""What a LoRA buys E-DiT, measured on the toy world: routers alone (frozen backbone, objective
distill) against routers + LoRA at several ranks against full end-to-end training (objective
anchored), every method with the toy benchmark's one training budget (variants.Budget), then sampled
with the full method (skip + width + cache) at matched compute and compared with the ORIGINAL dense
model's output at the reference step count, from the benchmark's scene sets and noise (PSNR, SSIM).

    python -m elastic_core.toy_lora [--steps 600] [--ranks 4 16] [--seeds 0 1] [--targets 0.4 0.5 0.6]
                                    [--methods routers lora e2e] [--size medium] [--lora-lr 1e-4]
                                    [--dit FILE] [--artifacts DIR] [--out bench-results/toy_lora.json]
    python -m elastic_core.toy_lora --merge seed0.json seed1.json ... --out all.json

routers + LoRA: the LoRA (elastic_core.lora, on every block's attention and MLP linears) and the
routers train jointly under the routers-only target, the frozen ORIGINAL model's guided prediction on
its own sampling paths (the budget's trajectory bank); the LoRA is merged into a copy of the model
before sampling. Matched compute, compute counting the routers (methods.elastic): per trained model,
every (tau, reuse band) of GRID runs on the benchmark's calibration scenes; the settings on the upper
envelope just below and above each target run on the test sets, and the target is read off the line
between them (benchmark.at_compute); K and the cache window are the shipped toy defaults. Trained
models are cached in --artifacts.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, replace

import numpy as np
import torch

from .argtypes import FRACTION, POSITIVE_FLOAT, POSITIVE_INT
from .config import ElasticConfig
from .lora import JointTrainer, LoraSet, attach, find_targets, merge
from .toy import pipeline as P
from .toy import methods as M
from .toy.benchmark import SIZES, Bench, Size, at_compute, frontier
from .toy.training import BANK_STEPS, TrajectoryBank, frozen_copy, new_routers, router_perf
from .toy.variants import Artifacts, Budget, Variant

LORA_LR = 1e-4  # Train Elastic Router's default LoRA learning rate
METHODS = {"routers": "routers only", "lora": "routers + LoRA r{rank}, lr {lr:g}", "e2e": "end to end"}
KEYS = ("compute", "psnr", "ssim", "true_psnr")


def train_lora(art: Artifacts, budget: Budget, rank: int, lora_lr: float) -> tuple[Variant, int]:
    """Routers + a rank-`rank` LoRA on a copy of the base model, distilled from the frozen original.
    -> (the variant with the LoRA merged into its model, the LoRA's parameter count)"""
    name = f"lora{rank}-lr{lora_lr:g}-{budget.key()}"
    student = P.load_dit(art.base_path).requires_grad_(False)
    targets = find_targets((f"blocks.{i}", b) for i, b in enumerate(student.blocks))
    n_params = sum(rank * (t.out_features + t.in_features) for t in targets)
    paths = [None if art.folder is None else os.path.join(art.folder, f"{art.base_key}-{name}{s}.safetensors")
             for s in ("", "-dit")]
    if paths[0] and all(os.path.isfile(p) for p in paths):
        return Variant(name, P.load_dit(paths[1]), P.load_toy_routers(paths[0]).routers), n_params
    art.log(f"training routers + LoRA r{rank}: {budget.steps} steps, LoRA lr {lora_lr:g}")
    teacher = frozen_copy(student)
    torch.manual_seed(budget.seed)
    lora = LoraSet(targets, rank, seed=budget.seed)
    attach(student, lora)
    cfg = budget.train_config(end_to_end=False)  # the backbone stays frozen; the LoRA is the trainer's 2nd group
    routers = new_routers(student, budget.seed)
    trainer = JointTrainer(routers, cfg, lora, lora_lr)
    bank = TrajectoryBank(teacher, budget.bank, BANK_STEPS, budget.seed) if budget.bank else None
    trainer.fit(router_perf(student, routers, np.random.default_rng(budget.seed), cfg, trainer.gate_kw, "distill",
                            teacher, budget.batch, bank))
    merge(student, lora)
    student.eval().requires_grad_(False)
    if paths[0]:
        P.save_toy_routers(routers, cfg, paths[0], objective="distill", half=False, notes=f"with LoRA r{rank}")
        P.save_dit(student, paths[1], quantize=False)
    return Variant(name, student, routers.requires_grad_(False)), n_params


def train_method(art: Artifacts, budget: Budget, method: str, rank: int, lora_lr: float) -> tuple[Variant, int]:
    """-> (trained variant, trainable parameters besides the routers)"""
    if method == "lora":
        return train_lora(art, budget, rank, lora_lr)
    v = art.edit("distill" if method == "routers" else "anchored", budget)
    return v, 0 if method == "routers" else sum(p.numel() for p in v.model.parameters())


# (tau, reuse band delta) tried on the calibration scenes; tau alone moves compute in steps here (the
# routers' gates sit near 0 or 1, most of the open ones at the same p), the band fills the gaps
GRID = tuple((tau, delta) for delta in (0.05, 0.5) for tau in (0.0, 0.5, 0.9, 0.97, 1.0))


def bracket(points: list[dict], target: float) -> list[dict]:
    """The calibration points on the upper envelope just below and just above `target` compute."""
    front = frontier(points)
    below = [p for p in front if p["compute"] <= target]
    above = [p for p in front if p["compute"] >= target]
    return ([below[-1]] if below else []) + ([above[0]] if above else [])


def curve(b: Bench, v: Variant, config: ElasticConfig, name: str, targets) -> dict:
    """Quality against compute of one trained model: every GRID setting on the calibration scenes, the
    envelope's settings around each target run on the test sets, each target read off between them
    (benchmark.at_compute). -> {"points": test points, "at": {target: {compute, psnr, ssim} or None}}"""
    ref = b.size.ref_steps
    cal = []
    for tau, delta in GRID:
        out = M.elastic(v.model, v.routers, config.with_(tau=tau, delta=delta), b.calib, ref, ref)
        cal.append({"compute": out.compute, "psnr": b.calib_psnr(out), "tau": tau, "delta": delta})
    picked = {(p["tau"], p["delta"]): p for t in targets for p in bracket(cal, t)}
    points = []
    for (tau, delta) in sorted(picked, key=lambda k: picked[k]["compute"]):
        pt, _ = b.measure(name, lambda s: M.elastic(v.model, v.routers, config.with_(tau=tau, delta=delta), s, ref,
                                                     ref), tau=tau, delta=delta)
        points.append({k: pt[k] for k in ("tau", "delta", *KEYS, *(k + "_range" for k in KEYS))})
    at = {}
    for t in targets:
        vals = {k: at_compute(points, t, k) for k in ("psnr", "ssim")}
        at[str(t)] = None if vals["psnr"] is None else {"compute": t, **vals}
    return {"calibration": cal, "points": points, "at": at}


def run(budget: Budget = Budget(), size: Size = SIZES["medium"], ranks=(4, 16), seeds=(0, 1),
        targets=(0.4, 0.5, 0.6), methods=("routers", "lora", "e2e"), lora_lr: float = LORA_LR,
        dit: str = P.DIT_FILE, artifacts: str | None = None, log=print) -> dict:
    size = replace(size, budget=budget)
    base = P.load_dit(dit).requires_grad_(False)
    b = Bench(size, base, log=lambda s: None)  # the benchmark's test and calibration sets, dense references
    art = Artifacts(artifacts, dit, log)
    config = ElasticConfig(**P.TOY_DEFAULTS)
    todo = [(m, r) for m in methods for r in (ranks if m == "lora" else (0,))]
    rows = []
    for method, rank in todo:
        name = METHODS[method].format(rank=rank, lr=lora_lr)
        for seed in seeds:
            t0 = time.perf_counter()
            v, extra = train_method(art, replace(budget, seed=seed), method, rank, lora_lr)
            t1 = time.perf_counter()
            c = curve(b, v, config, name, targets)
            rows.append({"method": name, "seed": seed, "rank": rank, "lora_lr": lora_lr if rank else None,
                         "trained_params": extra, **c,
                         "train_s": t1 - t0, "measure_s": time.perf_counter() - t1})
            log(f"{name:<20} seed {seed}: " + ", ".join(
                f"{t:.0%} -> " + ("n/a" if a is None else f"{a['psnr']:.2f} dB / {a['ssim']:.3f}")
                for t, a in zip(targets, c["at"].values())) + "  (measured " + ", ".join(
                f"{p['compute']:.0%}: {p['psnr']:.2f}" for p in c["points"])
                + f"; train {t1 - t0:.0f} s, measure {time.perf_counter() - t1:.0f} s)")
    return {"budget": {**asdict(budget), "lora_lr": lora_lr}, "size": {"sets": size.sets, "scenes": size.scenes,
            "calib": size.calib, "ref_steps": size.ref_steps}, "targets": list(targets), "seeds": list(seeds),
            "config": config.to_dict(), "threads": torch.get_num_threads(), "rows": rows,
            "summary": summarize(rows, targets)}


def summarize(rows: list[dict], targets) -> list[dict]:
    """Per method and target: mean and std over the seeds that reach the target."""
    out = []
    for name in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == name]
        for t in targets:
            got = [(r["seed"], r["at"][str(t)]) for r in rs if r["at"].get(str(t))]
            s = {"method": name, "target": t, "seeds": [sd for sd, _ in got], "trained_params": rs[0]["trained_params"]}
            for k in ("psnr", "ssim"):
                v = np.array([a[k] for _, a in got], dtype=np.float64)
                s.update({k: float(v.mean()) if len(v) else None, k + "_std": float(v.std()) if len(v) else None,
                          k + "_per_seed": v.tolist()})
            out.append(s)
    return out


def merge_results(parts: list[dict]) -> dict:
    """One result from runs of the same budget and scene sets on different seeds, methods or LoRA
    learning rates (one process each)."""
    def same(r):
        return {k: v for k, v in r["budget"].items() if k != "lora_lr"}, r["size"], r["targets"]
    for p in parts[1:]:
        if same(p) != same(parts[0]):
            raise ValueError("--merge: the files were made with different budgets, scene sets or targets")
    r = dict(parts[0])
    r["rows"] = []
    for p in parts:
        for row in p["rows"]:
            if row["rank"] and "lora_lr" not in row:  # a file written before rows carried their rate
                row = dict(row, lora_lr=p["budget"]["lora_lr"],
                           method=METHODS["lora"].format(rank=row["rank"], lr=p["budget"]["lora_lr"]))
            r["rows"].append(row)
    r["budget"] = same(parts[0])[0]
    r["seeds"] = sorted({row["seed"] for row in r["rows"]})
    r["summary"] = summarize(r["rows"], r["targets"])
    return r


def format_summary(r: dict) -> str:
    s = r["size"]
    lines = [f"toy world, {s['sets']} test sets x {s['scenes']} scenes, {s['ref_steps']} steps, budget "
             f"{r['budget']['steps']} steps; vs the original dense output, mean +- std over seeds {r['seeds']}",
             f"{'method':<30} {'params':>8} " + " ".join(f"{'@' + format(t, '.0%'):>30}" for t in r["targets"])]
    by: dict[str, list] = {}
    for x in r["summary"]:
        by.setdefault(x["method"], []).append(x)
    for name, xs in by.items():
        lines.append(f"{name:<30} {xs[0]['trained_params']:>8} " + " ".join(
            f"{'n/a':>30}" if x["psnr"] is None else
            f"{x['psnr']:5.2f}+-{x['psnr_std']:.2f} dB {x['ssim']:.3f}+-{x['ssim_std']:.3f} ({len(x['seeds'])})"
            for x in xs))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m elastic_core.toy_lora", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=POSITIVE_INT, default=Budget().steps, help="training steps of every method (the budget)")
    p.add_argument("--ranks", type=POSITIVE_INT, nargs="+", default=[4, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--targets", type=FRACTION, nargs="+", default=[0.4, 0.5, 0.6])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--size", choices=list(SIZES), default="medium", help="the benchmark's scene sets (benchmark.SIZES)")
    p.add_argument("--lora-lr", type=POSITIVE_FLOAT, default=LORA_LR, help="the LoRA's Adam rate (default: the node's)")
    p.add_argument("--dit", default=P.DIT_FILE, help="the toy DiT to start from (default: the shipped one)")
    p.add_argument("--artifacts", default=os.path.join("bench-results", "toy-artifacts"),
                   help="cache of trained models (shared with the toy benchmark)")
    p.add_argument("--threads", type=POSITIVE_INT, default=1)
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
        torch.set_num_threads(a.threads)
        r = run(replace(SIZES[a.size].budget if a.size == "quick" else Budget(), steps=a.steps),
                SIZES[a.size],
                tuple(a.ranks), tuple(a.seeds), tuple(a.targets), tuple(a.methods), a.lora_lr, a.dit, a.artifacts,
                log=lambda s: print(s, flush=True))
    print(format_summary(r))
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(r, f, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
