"""`elastic-dit bench --toy`: quality against compute, E-DiT against its strongest fair baselines.

Every method samples the same scene sets from the same noise and is measured against the dense
model's output at the reference step count (PSNR, SSIM) and against the world's truth (PSNR to the
closest true render of the caption, `world.fit`). A method's knob (steps, a cache threshold, tau, the
blocks removed) is set on a separate calibration set to hit each target compute, then the test sets
run once per target; every point reports the compute the test sets really spent, with the spread
over the sets. See methods.py for the compute count and baselines.py for the baselines' forms.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .methods import Output, SceneSet
from .metrics import db, psnr, ssim
from .model import ToyDiT
from .variants import Budget
from .world import fit

TARGETS = (0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85)
MATCH = 0.5  # the compute level of the matched comparison (issue targets)
EPS = 1e-9  # computes this close are one compute (float sums of step shares)
LOW = 0.2  # the low-compute regime, where E-DiT with fewer steps is read against its plans at those steps


@dataclass(frozen=True)
class Size:
    sets: int = 3  # test scene sets (the spread is over these)
    scenes: int = 16  # per set, complexity 0..1
    calib: int = 16  # calibration scenes (knobs, TeaCache's fit, the static model's blocks)
    ref_steps: int = 20
    hi_steps: int = 50  # dense at this many steps shows how curved the sampling paths are
    step_counts: tuple[int, ...] = (4, 6, 8, 10, 12, 14, 16, 20)
    targets: tuple[float, ...] = TARGETS
    refine: int = 3  # extra calibration runs toward the matched compute
    fewer: tuple[int, ...] = (10, 14)  # E-DiT combined with this many steps
    static_levels: tuple[int, ...] = (4, 6, 8)  # blocks removed
    fb_grid: tuple[tuple[int | None, float], ...] = ((2, 0.0), (3, 0.0), (None, 0.0), (3, 0.2), (None, 0.2))
    # E-DiT's reuse band, K and cache start, chosen on calibration as FBCache's cap and window are
    edit_grid: tuple[tuple[float, int, float], ...] = ((0.05, 3, 0.3), (0.5, 2, 0.3), (0.5, 3, 0.3), (0.5, 3, 0.1),
                                                       (0.5, 5, 0.1))
    random_seeds: int = 3
    grid_stride: int = 1  # use every n-th value of the knob grids on calibration scenes
    knob_stride: int = 1  # the slider study (tau, delta, cache start) at every n-th value; 0: none
    budget: Budget = field(default_factory=Budget)


SIZES = {
    "full": Size(),
    # what two shared CPU cores finish in about an hour: half the scenes, fewer settings tried
    "medium": Size(scenes=8, calib=8, refine=2, fb_grid=((2, 0.0), (3, 0.0), (3, 0.2)),
                   edit_grid=((0.05, 3, 0.3), (0.5, 3, 0.1), (0.5, 5, 0.1)), knob_stride=2),
    "quick": Size(sets=2, scenes=1, calib=1, ref_steps=3, hi_steps=4, step_counts=(1, 2, 3), targets=(0.5,),
                  refine=1, fewer=(2,), static_levels=(1,), fb_grid=((2, 0.0),), edit_grid=((0.05, 3, 0.3),), random_seeds=1,
                  grid_stride=3, knob_stride=0, budget=Budget(steps=2, batch=2, bank=2)),
}


def set_metrics(out: Output, ref: torch.Tensor, scenes: SceneSet) -> dict:
    truth = torch.from_numpy(np.stack([fit(x.numpy(), t.numpy()) for x, t in zip(out.images, scenes.tokens)]))
    return {"compute": out.compute, "psnr": psnr(out.images, ref), "ssim": ssim(out.images, ref),
            "true_psnr": psnr(out.images, truth)}


def aggregate(per_set: list[dict], **extra) -> dict:
    """Mean over the sets, with the lowest and highest set."""
    point = dict(extra)
    for k in per_set[0]:
        vals = [s[k] for s in per_set]
        point[k] = float(np.mean(vals))
        point[k + "_range"] = [float(min(vals)), float(max(vals))]
    return point


def interpolate_knob(grid: list[tuple[float, float]], target: float, log: bool) -> float:
    """The knob whose calibration compute is `target`, interpolated between measured (knob, compute)."""
    pts = sorted(grid)
    ks = np.array([k for k, _ in pts], dtype=np.float64)
    cs = np.array([c for _, c in pts], dtype=np.float64)
    order = np.argsort(cs, kind="stable")
    cs, ks = cs[order], ks[order]
    if log:
        ks = np.log(np.clip(ks, 1e-9, None))
    k = float(np.interp(target, cs, ks))
    return float(np.exp(k)) if log else k


class Bench:
    """Scene sets, references and the measuring loop of one benchmark run."""

    def __init__(self, size: Size, base: ToyDiT, log: Callable[[str], None] = print):
        self.size, self.base, self.log, self.t0 = size, base, log, time.perf_counter()
        self.sets = [SceneSet.make(f"test{i}", size.scenes, seed=1 + i, size=base.cfg.image) for i in range(size.sets)]
        self.calib = SceneSet.make("calibration", size.calib, seed=1000, size=base.cfg.image)
        from .methods import dense
        self.refs = [dense(base, s, size.ref_steps, size.ref_steps).images for s in self.sets]
        self.calib_ref = dense(base, self.calib, size.ref_steps, size.ref_steps).images

    def measure(self, method: str, run: Callable[[SceneSet], Output], **info) -> tuple[dict, list[Output]]:
        outs = [run(s) for s in self.sets]
        point = aggregate([set_metrics(o, r, s) for o, r, s in zip(outs, self.refs, self.sets)], method=method, **info)
        self.log(f"  {method:<34} compute {point['compute']:6.1%}  PSNR {db(point['psnr'])}  SSIM "
                 f"{point['ssim']:.3f}  true {db(point['true_psnr'])}  ({time.perf_counter() - self.t0:.0f} s)")
        return point, outs

    def calib_compute(self, run: Callable[[SceneSet], Output]) -> float:
        return run(self.calib).compute

    def knobs(self, run_knob: Callable[[SceneSet, float], Output], grid: list[float], log: bool,
              targets: tuple[float, ...] | None = None) -> list[tuple[float, float]]:
        """(target, knob) pairs: the knob set on the calibration scenes to spend each target compute;
        the matched target gets `refine` more calibration runs."""
        seen = [(k, self.calib_compute(lambda s: run_knob(s, k))) for k in grid[::self.size.grid_stride]]
        out = []
        for target in targets or self.size.targets:
            k = interpolate_knob(seen, target, log)
            for _ in range(self.size.refine if target in (MATCH, LOW) else 0):
                seen.append((k, self.calib_compute(lambda s: run_knob(s, k))))
                k = interpolate_knob(seen, target, log)
            out.append((target, k))
        return out

    def curve(self, method: str, run_knob, grid: list[float], log: bool, targets=None, knob_name: str = "knob"):
        """Points of `method` at the target computes. -> points, outputs per point"""
        points, outs = [], []
        for target, k in self.knobs(run_knob, grid, log, targets):
            p, o = self.measure(method, lambda s: run_knob(s, k), target=target, **{knob_name: k})
            points.append(p)
            outs.append(o)
        return points, outs

    def calib_psnr(self, out: Output) -> float:
        return psnr(out.images, self.calib_ref)


def at_compute(points: list[dict], target: float = MATCH, key: str = "psnr") -> float | None:
    """A curve's value at `target` compute, linear between the two points around it (None outside)."""
    pts = sorted((p["compute"], p[key]) for p in points)
    for (c0, v0), (c1, v1) in zip(pts, pts[1:]):
        if c0 - EPS <= target <= c1 + EPS:  # 4 / 20 steps is 0.20000000000000004: still at 20 %
            return v0 if c1 - c0 <= EPS else v0 + (v1 - v0) * min(max(target - c0, 0.0), c1 - c0) / (c1 - c0)
    return None


def frontier(points: list[dict], key: str = "psnr") -> list[dict]:
    """The upper envelope: points no other point beats with less or equal compute."""
    best, out = -np.inf, []
    for p in sorted(points, key=lambda p: (p["compute"], -p[key])):
        if p[key] > best:
            out.append(p)
            best = p[key]
    return out
