"""The compact router layout against the released one on the toy benchmark (`elastic-dit bench --toy`).

    python -m devtools.toy_layouts [--size medium] [--objectives distill anchored data] [--out FILE]

Only what the comparison needs: the benchmark's scene sets, references and training budget
(variants.Budget, the same for both layouts), then per objective and layout the routers trained,
E-DiT's reuse settings chosen on calibration scenes and its curve over the target computes, read at
matched compute (50 %) over the three test sets exactly as the benchmark reads its curves. Trained
routers are cached in bench-results/toy-artifacts (shared with the benchmark: its released-layout
routers are reused). The JSON is rewritten after every curve, so a run cut short keeps what finished.
"""
from __future__ import annotations

import argparse
import time

import torch

from elastic_core.results import write_json
from elastic_core.toy import suite as S
from elastic_core.toy.benchmark import SIZES
from elastic_core.toy.report import machine_info_cpu, matched, setup


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.toy_layouts", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="medium", choices=list(SIZES))
    ap.add_argument("--objectives", nargs="+", default=["distill", "anchored", "data"])
    ap.add_argument("--layouts", nargs="+", default=["compact", "released"])
    ap.add_argument("--folder", default="bench-results/toy-artifacts")
    ap.add_argument("--out", default="bench-results/toy-layouts.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)  # the benchmark's setting on a shared CPU
    t0, sz = time.perf_counter(), SIZES[a.size]
    b, art, _, config = setup(a.size, a.folder)  # as the benchmark's E-DiT curves
    res = {"size": a.size, "budget": vars(sz.budget), "curves": {}, "settings": {}, "matched": {}}
    for obj in a.objectives:
        for layout in a.layouts:
            name = f"E-DiT ({obj}), {layout} layout"
            v = art.edit(obj, sz.budget, layout)
            cfg = S.edit_settings(b, v, config)
            res["curves"][name], _ = S.edit_curve(b, v, cfg, name)
            res["settings"][name] = cfg.to_dict()
            res["matched"][name] = matched(res["curves"][name])
            res["machine"], res["wall_s"] = machine_info_cpu(), time.perf_counter() - t0
            write_json(a.out, res)
            m = res["matched"][name]
            print(f"== {name} at 50 %: " + ("curve does not reach 50 %" if m is None else
                  f"PSNR {m['psnr']:.2f} [{m['psnr_range'][0]:.2f}-{m['psnr_range'][1]:.2f}] dB, true "
                  f"{m['true_psnr']:.2f} dB, SSIM {m['ssim']:.3f}") + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
