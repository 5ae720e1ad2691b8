"""The toy benchmark's methods, each as a curve of quality against compute (benchmark.py measures).

  dense, fewer steps          the same model and sampler with fewer steps
  FBCache                     cap and caching window chosen on calibration scenes, threshold per target
  TeaCache                    rescale polynomial fitted on calibration scenes, threshold per target
  static pruned (trained)     blocks removed greedily by measured damage, then trained with E-DiT's budget
  static pruned (untrained)   the same blocks removed, no training (a weaker form, for reference)
  E-DiT <objective>           routers (and backbone) trained per objective; tau set per target
  random / fixed plan         E-DiT's per-(step, block) action rates without its routers (controls)
  E-DiT at N steps            E-DiT combined with fewer steps, with random / fixed plans at N steps
"""
from __future__ import annotations

import numpy as np

from ..config import ElasticConfig
from . import methods as M
from .baselines import action_rates, fixed_plan, greedy_drop, random_plan
from .benchmark import LOW, MATCH, Bench
from .variants import Artifacts, Variant

TAU_GRID = [0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95, 0.98, 1.0]
FB_GRID = [0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2]
TEA_GRID = [0.01, 0.03, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4]


def dense_curve(b: Bench) -> list[dict]:
    ref = b.size.ref_steps
    return [b.measure("dense, fewer steps", lambda s, n=n: M.dense(b.base, s, n, ref), steps=n)[0]
            for n in b.size.step_counts]


def fbcache_curve(b: Bench) -> tuple[list[dict], dict]:
    """The cap and window with the best calibration PSNR at the matched compute, then the curve."""
    ref, best = b.size.ref_steps, None
    for cap, start in b.size.fb_grid:
        def run(s, th, cap=cap, start=start):
            return M.fbcache(b.base, s, ref, ref, th, cap, start)
        (_, th), = b.knobs(run, FB_GRID, True, (MATCH,))
        q = b.calib_psnr(run(b.calib, th))
        if best is None or q > best[0]:
            best = (q, cap, start)
    _, cap, start = best
    b.log(f"FBCache: cap {cap}, caching from {start:.0%} of the steps (best on calibration at {MATCH:.0%})")
    pts, _ = b.curve("FBCache", lambda s, th: M.fbcache(b.base, s, ref, ref, th, cap, start), FB_GRID, True,
                     knob_name="threshold")
    return pts, {"cap": cap, "start": start}


def teacache_curve(b: Bench, targets: tuple[float, ...] | None = None) -> tuple[list[dict], dict]:
    ref = b.size.ref_steps
    poly = M.teacache_fit(b.base, b.calib, ref)
    b.log(f"TeaCache: rescale polynomial {np.round(poly, 4).tolist()} (fitted on calibration scenes)")
    pts, _ = b.curve("TeaCache", lambda s, th: M.teacache(b.base, s, ref, ref, th, poly), TEA_GRID, True,
                     targets, knob_name="threshold")
    return pts, {"poly": poly}


def static_order(b: Bench) -> list[int]:
    """Blocks in the order greedy removal takes them, damage = MSE against the calibration reference."""
    ref = b.size.ref_steps

    def damage(drop):
        return -b.calib_psnr(M.static(b.base, drop, b.calib, ref, ref))
    order = greedy_drop(damage, len(b.base.blocks), max(b.size.static_levels))
    b.log(f"static: greedy removal order on calibration scenes {order}")
    return order


def static_curves(b: Bench, art: Artifacts, order: list[int], objective: str) -> tuple[list[dict], list[dict]]:
    ref, trained, untrained = b.size.ref_steps, [], []
    for k in b.size.static_levels:
        drop = frozenset(order[:k])
        untrained.append(b.measure("static pruned (untrained)", lambda s: M.static(b.base, drop, s, ref, ref),
                                   removed=sorted(drop))[0])
        v = art.static(drop, b.size.budget, objective)
        trained.append(b.measure("static pruned (trained)", lambda s: M.static(v.model, drop, s, ref, ref),
                                 removed=sorted(drop), objective=objective)[0])
    return trained, untrained


def edit_settings(b: Bench, v: Variant, config: ElasticConfig) -> ElasticConfig:
    """The reuse band, K and cache start with the best calibration PSNR at the matched compute (tau
    set per combination), as FBCache's cap and window are chosen. A combination whose tau cannot
    bring the calibration compute within 3 points of the target only counts if none can."""
    ref, scored = b.size.ref_steps, []
    for delta, k, start in b.size.edit_grid:
        cfg = config.with_(delta=delta, max_reuse=k, cache_start=start)

        def run(s, tau, cfg=cfg):
            return M.elastic(v.model, v.routers, cfg.with_(tau=tau), s, ref, ref)
        (_, tau), = b.knobs(run, TAU_GRID[::2], False, (MATCH,))
        out = run(b.calib, tau)
        scored.append((abs(out.compute - MATCH) > 0.03, -b.calib_psnr(out), abs(out.compute - MATCH), cfg))
    off, _, _, best = min(scored, key=lambda x: x[:3])
    b.log(f"{v.name}: delta {best.delta}, K {best.max_reuse}, caching from {best.cache_start:.0%} "
          f"(best on calibration at {MATCH:.0%}{', none within 3 points of it' if off else ''})")
    return best


def edit_curve(b: Bench, v: Variant, config: ElasticConfig, name: str, steps: int | None = None,
               targets: tuple[float, ...] | None = None):
    """E-DiT with routers `v` at `steps` (default the reference), tau set per target compute (those
    of the size, or `targets`, that `steps` can reach)."""
    ref = b.size.ref_steps
    n = steps or ref
    targets = tuple(t for t in (targets or b.size.targets) if t < n / ref + 0.02)
    pts, outs = b.curve(name, lambda s, tau: M.elastic(v.model, v.routers, config.with_(tau=tau), s, n, ref),
                        TAU_GRID, False, targets, knob_name="tau")
    for p, o in zip(pts, outs):
        p["steps"] = n
        p.update(gate_stats([x.record for x in o], config.with_(tau=p["tau"])))
    return pts, outs


def gate_stats(records, config: ElasticConfig) -> dict:
    """How decided the gates are: share of p within 0.05 of tau, and skip / reuse / run shares."""
    ps = np.concatenate([np.asarray(r.events["p"]) for r in records])
    acts = np.concatenate([np.asarray(r.events["action"]) for r in records])
    return {"near_tau": float(np.mean(np.abs(ps - config.tau) < 0.05)), "skipped": float(np.mean(acts == 0)),
            "reused": float(np.mean(acts == 1)), "ran": float(np.mean(acts == 2))}


def control_curves(b: Bench, v: Variant, config: ElasticConfig, pts: list[dict], outs,
                   steps: int | None = None) -> tuple[list, list]:
    """Random and fixed plans at the action rates of each E-DiT point, at E-DiT's step count."""
    ref, widths = b.size.ref_steps, v.routers.config.widths
    n = steps or ref
    at = "" if n == ref else f" at {n} steps"
    rnd, fix = [], []
    for p, o in zip(pts, outs):
        acts, wid = action_rates([x.record for x in o], n, len(v.model.blocks), widths)
        cfg = config.with_(tau=p["tau"])
        seeds = range(b.size.random_seeds if p["target"] in (MATCH, LOW) else 1)
        for seed in seeds:
            rnd.append(b.measure(f"random plan{at}", lambda s, seed=seed: M.elastic(
                v.model, v.routers, cfg, s, n, ref, random_plan(acts, wid, widths, seed)), seed=seed,
                target=p["target"], steps=n)[0])
        fix.append(b.measure(f"fixed plan{at}", lambda s: M.elastic(
            v.model, v.routers, cfg, s, n, ref, fixed_plan(acts, wid, widths)), target=p["target"], steps=n)[0])
    return rnd, fix


def reference_info(b: Bench) -> dict:
    """How curved the sampling paths are (dense at the reference vs more steps) and how true."""
    hi = [M.dense(b.base, s, b.size.hi_steps, b.size.ref_steps).images for s in b.sets]
    from .benchmark import set_metrics
    ref_true = [set_metrics(M.Output(r, 1.0), r, s)["true_psnr"] for r, s in zip(b.refs, b.sets)]
    hi_m = [set_metrics(M.Output(h, 1.0), r, s) for h, r, s in zip(hi, b.refs, b.sets)]
    return {"ref_steps": b.size.ref_steps, "hi_steps": b.size.hi_steps,
            "psnr_ref_vs_hi": [m["psnr"] for m in hi_m], "true_psnr_ref": ref_true,
            "true_psnr_hi": [m["true_psnr"] for m in hi_m]}


def knob_study(b: Bench, v: Variant, config: ElasticConfig) -> dict:
    """Compute and calibration PSNR as each slider moves alone: tau, delta, the cache start."""
    ref = b.size.ref_steps

    def point(cfg):
        o = M.elastic(v.model, v.routers, cfg, b.calib, ref, ref)
        return {"compute": o.compute, "psnr": b.calib_psnr(o)}
    sweeps = {"tau": [round(0.02 * i, 2) for i in range(51)], "delta": [round(0.025 * i, 3) for i in range(21)],
              "cache_start": [round(0.05 * i, 2) for i in range(21)]}
    n = b.size.knob_stride
    out = {k: [dict({k: x}, **point(config.with_(**{k: x}))) for x in xs[::n]] for k, xs in sweeps.items()}
    for k in sweeps:
        cs = [p["compute"] for p in out[k]]
        out[k + "_largest_step"] = float(max(abs(a - c) for a, c in zip(cs, cs[1:])))
        out[k + "_range"] = [float(min(cs)), float(max(cs))]
    return out
