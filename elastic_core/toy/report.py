"""The toy benchmark end to end: run every method (suite.py), judge the targets, print, plot."""
from __future__ import annotations

import os
import time

import numpy as np

from . import suite as S
from .benchmark import LOW, MATCH, SIZES, Bench, at_compute, frontier
from .metrics import db
from .pipeline import DIT_FILE, load_dit, load_toy_routers
from .training import OBJECTIVES
from .variants import Artifacts

EDIT = "E-DiT ({})"


def run_benchmark(size: str = "full", folder: str | None = "bench-results/toy-artifacts",
                  objectives: tuple[str, ...] = OBJECTIVES, log=print, progress=None) -> dict:
    """Every method's curve; `progress(result so far)` is called after each method (partial saves)."""
    progress = progress or (lambda r: None)
    t0 = time.perf_counter()
    sz = SIZES[size]
    if size == "quick":
        log(SMOKE)
    b, art, ckpt, config = setup(size, folder, log)
    res = {"size": size, "settings": {"router_file_defaults": config.to_dict(), "budget": vars(sz.budget)},
           "reference": S.reference_info(b), "curves": {}}
    c = res["curves"]
    c["dense, fewer steps"] = S.dense_curve(b)
    c["FBCache"], res["settings"]["FBCache"] = S.fbcache_curve(b)
    c["TeaCache"], res["settings"]["TeaCache"] = S.teacache_curve(b)
    progress(res)
    variants, outs, cfgs = {}, {}, {}
    for obj in objectives:
        variants[obj] = art.edit(obj, sz.budget)
        cfgs[obj] = S.edit_settings(b, variants[obj], config)
        c[EDIT.format(obj)], outs[obj] = S.edit_curve(b, variants[obj], cfgs[obj], EDIT.format(obj))
        progress(res)
    res["settings"]["E-DiT"] = {obj: cfg.to_dict() for obj, cfg in cfgs.items()}
    best = max(objectives, key=lambda o: _score(c[EDIT.format(o)]))
    res["best_objective"] = best
    c["random plan"], c["fixed plan"] = S.control_curves(b, variants[best], cfgs[best], c[EDIT.format(best)], outs[best])
    for n in sz.fewer:  # E-DiT with fewer steps, and its own plans at those steps: is a win the routers'?
        name = f"E-DiT ({best}) at {n} steps"
        c[name], fewer_outs = S.edit_curve(b, variants[best], cfgs[best], name, n)
        c[f"random plan at {n} steps"], c[f"fixed plan at {n} steps"] = S.control_curves(
            b, variants[best], cfgs[best], c[name], fewer_outs, steps=n)
        progress(res)
    order = S.static_order(b)
    static_obj = best if best != "distill" else "anchored"
    c["static pruned (trained)"], c["static pruned (untrained)"] = S.static_curves(b, art, order, static_obj)
    res["settings"]["static"] = {"order": order, "objective": static_obj}
    res["shipped"] = shipped_point(b, ckpt, b.base)
    progress(res)
    if sz.knob_stride:
        res["knobs"] = S.knob_study(b, variants[best], cfgs[best])
    res["machine"], res["wall_s"] = machine_info_cpu(), time.perf_counter() - t0
    return finalize(res)


def setup(size: str, folder: str | None, log=print):
    """What every toy measurement starts from: the scene sets and references of `size` on the shipped DiT,
    the cache of trained variants, the shipped routers and E-DiT's config. E-DiT's curves run routers as
    trained, width head on; the shipped file's own defaults (width off) are one more point ("shipped").
    -> (Bench, Artifacts, shipped RouterCheckpoint, ElasticConfig)"""
    b = Bench(SIZES[size], load_dit(), log)
    ckpt = load_toy_routers()
    return b, Artifacts(folder, DIT_FILE, log), ckpt, ckpt.meta.elastic_config().with_(width=True)


def _by_target(points: list[dict]) -> list[dict]:
    """Points measured more than once at one target (random plans over seeds) averaged into one."""
    groups: dict = {}
    for p in points:
        groups.setdefault(p.get("target", id(p)), []).append(p)
    out = []
    for ps in groups.values():
        q = {k: float(np.mean([p[k] for p in ps])) for k in ("compute", "psnr", "ssim", "true_psnr")}
        for k in ("psnr", "ssim", "true_psnr"):
            q[k + "_range"] = [float(min(p[k + "_range"][0] for p in ps)), float(max(p[k + "_range"][1] for p in ps))]
        out.append(q)
    return out


def matched(points: list[dict], x: float = MATCH) -> dict | None:
    """A curve read at `x` compute, linear between its two points around x (a knob rarely lands on x
    exactly, and committed gates make E-DiT's compute jump): mean, lowest and highest test set, and
    the measured point nearest x. None when the curve does not reach across x."""
    pts = _by_target(points)
    row = {"compute": x}
    for k in ("psnr", "ssim", "true_psnr"):
        row[k] = at_compute(pts, x, k)
        lo = at_compute([{"compute": p["compute"], "v": p[k + "_range"][0]} for p in pts], x, "v")
        hi = at_compute([{"compute": p["compute"], "v": p[k + "_range"][1]} for p in pts], x, "v")
        row[k + "_range"] = [lo, hi]
    if row["psnr"] is None:
        return None
    near = min(pts, key=lambda p: abs(p["compute"] - x))
    row["nearest"] = {"compute": near["compute"], "psnr": near["psnr"]}
    return row


def _score(points: list[dict]) -> float:
    """PSNR at MATCH compute, or at the point nearest it when the curve does not reach across."""
    row = matched(points)
    return row["psnr"] if row else min(points, key=lambda p: abs(p["compute"] - MATCH))["psnr"]


def finalize(res: dict) -> dict:
    """The matched table and the targets, from the curves (also for a result file written earlier)."""
    res["matched"] = {name: matched(pts) for name, pts in res["curves"].items()}
    res["targets"] = judge(res)
    res["low_compute"] = low_compute(res)
    return res


def low_compute(res: dict, xs: tuple[float, ...] = (0.15, LOW)) -> dict:
    """At 15 % and 20 % compute: every curve read there, and per step count N the margin of E-DiT at N
    steps over the better of its random and fixed plans at N steps (the routers' own share of a win
    over fewer steps alone), on both measures. None where a curve does not reach x."""
    c, best = res["curves"], res.get("best_objective")
    out = {}
    for x in xs:
        rows = {name: matched(pts, x) for name, pts in c.items()}
        rows = {k: v for k, v in rows.items() if v}
        margins = {}
        for name in c:
            if best and name.startswith(EDIT.format(best) + " at "):
                n = name.rsplit(" at ", 1)[1]  # "10 steps"
                plans = [rows.get(f"{kind} plan at {n}") for kind in ("random", "fixed")]
                if rows.get(name) and all(plans):
                    margins[n] = {k: rows[name][k] - max(p[k] for p in plans) for k in ("psnr", "true_psnr")}
        out[f"{x:g}"] = {"curves": rows, "routers_over_plans": margins}
    return out


def shipped_point(b: Bench, ckpt, base) -> dict:
    """The shipped router file at its own defaults: where it lands and how decided its gates are."""
    from . import methods as M
    p, o = b.measure("E-DiT (shipped file, defaults)", lambda s: M.elastic(base, ckpt.routers, ckpt.meta.elastic_config(),
                                                                         s, b.size.ref_steps, b.size.ref_steps))
    p.update(S.gate_stats([x.record for x in o], ckpt.meta.elastic_config()))
    return p


def machine_info_cpu() -> dict:
    import platform

    import torch
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": "cpu"}


def combo_gain(c: dict, best: str) -> dict:
    """E-DiT with fewer steps vs fewer steps alone: the largest frontier gap in 30-70 % compute."""
    combo = frontier([p for name, pts in c.items() if name.startswith(EDIT.format(best)) for p in pts])
    dense = frontier(c["dense, fewer steps"])
    gaps = []
    for x in np.arange(0.30, 0.7001, 0.01):
        a, d = at_compute(combo, x), at_compute(dense, x)
        if a is not None and d is not None and np.isfinite(a) and np.isfinite(d):
            gaps.append((float(a - d), float(x)))
    gain, where = max(gaps) if gaps else (float("nan"), float("nan"))
    return {"gain_db": gain, "at_compute": where}


def judge(res: dict) -> list[dict]:
    """The issue's targets: margins in dB at MATCH compute (curves read there), the combination's
    largest frontier gain, and how decided the shipped gates are."""
    m, best = res["matched"], res["best_objective"]

    def psnr(name):
        return m[name]["psnr"] if m.get(name) else float("nan")
    e = psnr(EDIT.format(best))
    free = max(psnr("FBCache"), psnr("TeaCache"))
    combo = combo_gain(res["curves"], best)
    near = res["shipped"]["near_tau"]
    rows = [("best E-DiT >= 1 dB above every training-free baseline at 50 %", e - free, 1.0),
            ("best E-DiT >= 2 dB above the random plan at its rates", e - psnr("random plan"), 2.0),
            ("best E-DiT >= 1 dB above the equally trained static model", e - psnr("static pruned (trained)"), 1.0),
            ("E-DiT + fewer steps frontier >= 0.5 dB above fewer steps in 30-70 %", combo["gain_db"], 0.5)]
    out = [{"target": t, "value": float(v), "met": bool(v >= bar)} for t, v, bar in rows]
    out.append({"target": "<= 10 % of gate probabilities within 0.05 of tau (shipped routers)", "value": float(near),
                "met": bool(near <= 0.10)})
    return out + [{"combo": combo}]


SMOKE = ("SMOKE RUN (--toy-size quick): 1 scene per test set, 2 training steps. It checks that every method "
         "runs; its numbers mean nothing (a compute above 100 % is routers that ran while nothing was skipped). "
         "For results: --toy-size medium.")


def _range(lo: float, hi: float) -> str:
    return f"({lo:5.2f}-{hi:5.2f})" if np.isfinite(lo) and np.isfinite(hi) else "(identical)".rjust(13)


def _target_line(t: dict, smoke: bool) -> str:
    if smoke or not np.isfinite(t["value"]):
        why = "not judged (smoke run)" if smoke else "not measured (no curve reaches it)"
        return f"  {why}: {t['target']}"
    return f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']:+.3f}"


def format_report(res: dict) -> str:
    r, smoke = res["reference"], res["size"] == "quick"
    lines = ([SMOKE, ""] if smoke else []) + [
        f"Toy benchmark ({res['size']}): quality against compute; reference = dense at {r['ref_steps']} steps, "
        f"classifier-free guided; {len(r['psnr_ref_vs_hi'])} test sets",
        f"dense {r['ref_steps']} vs {r['hi_steps']} steps: PSNR {db(float(np.mean(r['psnr_ref_vs_hi'])))}; "
        f"against the true renders: {db(float(np.mean(r['true_psnr_ref'])))} ({r['ref_steps']} steps), "
        f"{db(float(np.mean(r['true_psnr_hi'])))} ({r['hi_steps']} steps)", "",
        f"at {MATCH:.0%} compute, each curve read between its two points around it (range over test sets):",
        f"{'method':<36} {'PSNR':>22} {'SSIM':>6} {'true':>11}   nearest measured point"]
    for name, x in sorted(((n, x) for n, x in res["matched"].items() if x), key=lambda kv: -kv[1]["psnr"]):
        near = x["nearest"]
        lines.append(f"{name:<36} {db(x['psnr'])} {_range(*x['psnr_range'])} {x['ssim']:>6.3f} {db(x['true_psnr'])}   "
                     f"{db(near['psnr']).strip()} at {near['compute']:.1%}")
    lines += ["", "targets:"] + [_target_line(t, smoke) for t in res["targets"] if "target" in t]
    lines += low_compute_lines(res.get("low_compute") or {})
    s = res["shipped"]
    lines.append(f"shipped routers at their defaults: compute {s['compute']:.1%}, PSNR {db(s['psnr']).strip()}, "
                 f"p within 0.05 of tau {s['near_tau']:.1%}")
    if smoke:
        lines += ["", SMOKE]
    return "\n".join(lines)


def low_compute_lines(low: dict) -> list[str]:
    """The low-compute table: true-render and reference PSNR per curve, then the routers' margins."""
    lines = []
    for x, tab in low.items():
        lines += ["", f"at {float(x):.0%} compute (curves that reach it; true renders, then the dense reference):"]
        if not tab["curves"]:
            lines.append("  no curve has measured points on both sides of it")
        for name, r in sorted(tab["curves"].items(), key=lambda kv: -kv[1]["true_psnr"]):
            lines.append(f"  {name:<36} true {db(r['true_psnr'])}  ref {db(r['psnr'])}")
        for n, m in tab["routers_over_plans"].items():
            signed = [f"{v:+.2f} dB" if np.isfinite(v) else "n/a" for v in (m["true_psnr"], m["psnr"])]
            lines.append(f"  routers over the better plan at {n}: true {signed[0]}, ref {signed[1]}")
    return lines


def plot(res: dict, path: str) -> str:
    """The curves as a PNG (plot.py draws them). -> path"""
    from .plot import plot as draw
    return draw(res, path)


__all__ = ["run_benchmark", "format_report", "plot", "Bench"]
