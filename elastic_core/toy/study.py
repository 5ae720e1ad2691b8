"""Which router training commits and helps: gate estimators, the width head, the objectives and
their inputs, each trained with one budget and measured on calibration scenes at matched compute.

    python -m elastic_core.toy.study [--steps 600] [--out bench-results/toy-study.json]

Every recipe is the benchmark's budget (variants.Budget: distill and anchored on the teacher's
guided trajectories, noisy gates, width head on) with one change. For each: the share of gate
probabilities within 0.05 of tau (at tau 0.5), the compute at the file's defaults, and PSNR against
the dense output with tau set (bisected) to 50 % compute, with the width head on and off at inference.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from ..argtypes import POSITIVE_INT
from ..results import write_json
from . import methods as M
from .metrics import psnr
from .pipeline import DIT_FILE, load_dit
from .variants import Artifacts, Budget

# the inference settings the recipes are compared at (tau bisected): a narrow reuse band, so that the
# gates, not the cache, decide
STUDY_CONFIG = {"tau": 0.5, "delta": 0.05, "max_reuse": 3, "cache_start": 0.3, "cache_end": 1.0}

RECIPES = {  # name: (objective, changes to the benchmark's budget)
    "distill, straight-through gate": ("distill", {"gate_noise": 0.0}),
    "distill, noisy gate": ("distill", {}),
    "distill, noisy gate, no width head": ("distill", {"train_width": False}),
    "anchored, noisy gate, noised world images": ("anchored", {"bank": 0}),
    "anchored, noisy gate": ("anchored", {}),
    "data, noisy gate": ("data", {}),
}


def bisect_tau(run, target: float, iters: int = 7) -> tuple[float, "M.Output"]:
    """tau whose calibration compute is closest to `target` (compute falls as tau rises)."""
    lo, hi, best = 0.0, 1.0, None
    for _ in range(iters):
        mid = (lo + hi) / 2
        out = run(mid)
        if best is None or abs(out.compute - target) < abs(best[1].compute - target):
            best = (mid, out)
        lo, hi = (mid, hi) if out.compute > target else (lo, mid)
    return best


def measure(model, routers, base, scenes, ref, steps: int) -> dict:
    from ..config import ElasticConfig
    cfg = ElasticConfig(**STUDY_CONFIG)
    at_default = M.elastic(model, routers, cfg, scenes, steps, steps)
    ps = np.asarray(at_default.record.events["p"])
    row = {"near_tau": float(np.mean(np.abs(ps - 0.5) < 0.05)), "compute_default": at_default.compute,
           "psnr_default": psnr(at_default.images, ref)}
    for width in (True, False):
        tau, out = bisect_tau(lambda t: M.elastic(model, routers, cfg.with_(tau=t, width=width), scenes, steps, steps),
                              0.5)
        key = "width_on" if width else "width_off"
        row[key] = {"tau": tau, "compute": out.compute, "psnr": psnr(out.images, ref)}
    return row


def run_study(steps: int, recipes: list[str], dit: str = DIT_FILE, scenes: int = 16, ref_steps: int = 20,
              folder: str | None = "bench-results/toy-artifacts", log=print) -> dict:
    """Trained routers are cached in `folder` (the benchmark reuses those with its budget)."""
    torch.manual_seed(0)
    base = load_dit(dit)
    art = Artifacts(folder, dit, log)
    calib = M.SceneSet.make("calibration", scenes, seed=1000, size=base.cfg.image)
    ref = M.dense(base, calib, ref_steps, ref_steps).images
    out, t0 = {}, time.perf_counter()
    for name in recipes:
        objective, changes = RECIPES[name]
        v = art.edit(objective, replace(Budget(steps=steps), **changes))
        row = measure(v.model, v.routers, base, calib, ref, ref_steps)
        out[name] = row
        log(f"{name:<42} near tau {row['near_tau']:5.1%}  default compute {row['compute_default']:5.1%} "
            f"PSNR {row['psnr_default']:5.2f}  | 50 %: width on {row['width_on']['psnr']:5.2f} dB "
            f"({row['width_on']['compute']:.1%}), off {row['width_off']['psnr']:5.2f} dB "
            f"({row['width_off']['compute']:.1%})  ({time.perf_counter() - t0:.0f} s)")
    return {"steps": steps, "scenes": scenes, "ref_steps": ref_steps, "recipes": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=POSITIVE_INT, default=Budget().steps, help="training steps (the benchmark's budget: its cache is shared)")
    p.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--dit", default=DIT_FILE)
    p.add_argument("--out", default="bench-results/toy-study.json")
    args = p.parse_args(argv)
    write_json(args.out, run_study(args.steps, args.recipes, args.dit))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
