"""The low-compute regime of the toy benchmark (`elastic-dit bench --toy`) on its own: is a win of
E-DiT with fewer steps the routers', or fewer steps with any plan?

    python -m devtools.toy_low_compute [--size medium] [--objective distill] [--layout compact] [--out FILE]

Runs, with the benchmark's scene sets, references, training budget and calibration: dense with fewer
steps, TeaCache, and E-DiT at the reference and at each of the size's fewer step counts (10 and 14 of
20), every curve down to 15 % compute; at each E-DiT point at N steps, a random and a fixed plan with
that point's per-(step, block) action rates at the same N steps (the controls). Then reads every curve
at 15 % and 20 % compute (report.low_compute). Trained routers are cached in the benchmark's artifact
folder; the JSON is rewritten after every curve, so a run cut short keeps what finished.
"""
from __future__ import annotations

import argparse
import time

import torch

from elastic_core.results import write_json
from elastic_core.toy import suite as S
from elastic_core.toy.benchmark import LOW, SIZES
from elastic_core.toy.report import low_compute, low_compute_lines, machine_info_cpu, setup

TARGETS = (0.15, LOW, 0.3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.toy_low_compute", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="medium", choices=list(SIZES))
    ap.add_argument("--objective", default="distill", choices=["distill", "anchored", "data"])
    ap.add_argument("--layout", default="compact", choices=["compact", "released"])
    ap.add_argument("--folder", default="bench-results/toy-artifacts")
    ap.add_argument("--out", default="bench-results/toy-low-compute.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)  # the benchmark's setting on a shared CPU
    t0, sz = time.perf_counter(), SIZES[a.size]
    b, art, _, config = setup(a.size, a.folder)  # as the benchmark's E-DiT curves
    res = {"size": a.size, "budget": vars(sz.budget), "objective": a.objective, "layout": a.layout,
           "best_objective": a.objective, "curves": {}}
    c = res["curves"]

    def save():
        res["machine"], res["wall_s"] = machine_info_cpu(), time.perf_counter() - t0
        res["low_compute"] = low_compute(res)
        write_json(a.out, res)
    c["dense, fewer steps"] = S.dense_curve(b)
    save()
    v = art.edit(a.objective, sz.budget, a.layout)
    cfg = S.edit_settings(b, v, config)
    res["settings"] = cfg.to_dict()
    ref = sz.ref_steps
    for n in (ref,) + tuple(sz.fewer):
        name = f"E-DiT ({a.objective})" + ("" if n == ref else f" at {n} steps")
        targets = tuple(t for t in TARGETS if t < n / ref + 0.02)
        pts, outs = S.edit_curve(b, v, cfg, name, n, targets=targets)
        c[name] = pts
        if n != ref:
            c[f"random plan at {n} steps"], c[f"fixed plan at {n} steps"] = S.control_curves(b, v, cfg, pts, outs, steps=n)
        save()
    c["TeaCache"], res["teacache"] = S.teacache_curve(b, targets=TARGETS)
    save()
    print("\n".join(low_compute_lines(res["low_compute"])))
    print(f"wrote {a.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
