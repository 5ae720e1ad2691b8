"""`elastic-dit bench`: what the engine costs and what it saves, on a reference DiT block.

Three measurements, each a ratio taken side by side in one process (absolute times on shared
machines are noise; ratios are what the targets are about):
  (a) router time / block time                                      target <= 1 %
  (b) MLP time at width s / MLP time at full width                    target <= s + 0.05
  (c) a stack run with a fixed decision plan (~40 % skipped, mean width 0.6, ~15 % reused):
      measured wall speedup over the dense stack / ideal speedup from counted FLOPs   target >= 0.9
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .config import ElasticConfig, RouterConfig
from .results import write_json
from .reference import RefDoubleBlock, double_run_fn, plain_stack, randomize_
from .policy import PlanPolicy
from .router import RouterSet
from .runner import ElasticRun, run_stack
from .stats import REUSE, RUN, SKIP


@dataclass(frozen=True)
class BenchSize:
    dim: int = 3072
    heads: int = 24
    img_tokens: int = 192
    txt_tokens: int = 64
    blocks: int = 6  # stack positions in (c); they share `distinct` weight sets to bound memory
    distinct: int = 2
    steps: int = 5
    repeats: int = 3
    full_tokens: tuple[int, int] | None = (4096, 512)  # (a) again at a real image size (1024^2 Flux / Qwen)


SIZES = {
    "cpu": BenchSize(),
    "gpu": BenchSize(img_tokens=4096, txt_tokens=512, blocks=12, distinct=4, steps=8, repeats=5, full_tokens=None),
    "quick": BenchSize(dim=256, heads=4, img_tokens=64, txt_tokens=16, blocks=4, distinct=2, steps=4, repeats=2,
                       full_tokens=None),
}


def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _timer(device: torch.device, fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of fn over `repeats` runs after one warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _paired(device: torch.device, a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall seconds of a and b, run alternately (a, b, a, b, ...) so that drift on a shared
    machine hits both alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a(), b()
    sync()
    times: tuple[list, list] = ([], [])
    for _ in range(repeats):
        for fn, out in ((a, times[0]), (b, times[1])):
            t = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def plan_for(steps: int, blocks: int, skip=0.4, reuse=0.15, widths=(0.5, 0.75, 0.25, 1.0, 0.5)):
    """A fixed decision plan: every step skips and reuses a deterministic, shuffled share of blocks
    and runs the rest, the runs cycling through `widths` (mean 0.6). A reuse with nothing cached yet
    (step 0) runs instead, as the engine does."""
    g = torch.Generator().manual_seed(0)
    table, n = {}, 0
    n_skip, n_reuse = round(skip * blocks), round(reuse * blocks)
    for s in range(steps):
        for j, i in enumerate(torch.randperm(blocks, generator=g).tolist()):
            if j < n_skip:
                table[(s, i)] = (SKIP, 1.0)
            else:
                table[(s, i)] = (REUSE if j < n_skip + n_reuse else RUN, widths[n % len(widths)])
                n += 1
    return lambda step, block: table.get((step, block), (RUN, 1.0))


def _setup(size: BenchSize, device, dtype):
    g = torch.Generator().manual_seed(0)
    distinct = [randomize_(RefDoubleBlock(size.dim, size.heads), 0.02, g).to(device, dtype) for _ in range(size.distinct)]
    blocks = [distinct[i % size.distinct] for i in range(size.blocks)]
    routers = RouterSet(RouterConfig(size.dim), [f"double_blocks.{i}" for i in range(size.blocks)])
    routers = routers.init_full_capacity(generator=g).to(device)
    x = [torch.randn(1, n, size.dim, generator=g).to(device, dtype) for n in (size.img_tokens, size.txt_tokens, 0)]
    vec = torch.randn(1, size.dim, generator=g).to(device, dtype)
    return blocks, routers, x[0], x[1], vec


def bench_router(blocks, routers, img, txt, vec, device, repeats) -> dict:
    blk, router = blocks[0], routers[0]
    t_block = _timer(device, lambda: blk(img, txt, vec), repeats)
    t_router = _timer(device, lambda: router([txt, img], vec), repeats * 3)
    return {"tokens": img.shape[1] + txt.shape[1], "block_s": t_block, "router_s": t_router,
            "fraction": t_router / t_block, "target": 0.01}


def bench_router_full(size: BenchSize, blocks, routers, vec, device, dtype) -> dict | None:
    """(a) at a real token count, one timed call each (a CPU block call takes seconds here)."""
    if size.full_tokens is None:
        return None
    g = torch.Generator().manual_seed(1)
    img, txt = (torch.randn(1, n, size.dim, generator=g).to(device, dtype) for n in size.full_tokens)
    return bench_router(blocks, routers, img, txt, vec, device, 1)


def bench_widths(blocks, img, vec, device, repeats) -> dict:
    import torch.nn.functional as F
    blk = blocks[0]
    x = F.layer_norm(img, img.shape[-1:])
    full = _timer(device, lambda: blk.mlp("img", x, 1.0), repeats * 2)
    rows = {}
    for s in (0.25, 0.5, 0.75):
        t = _timer(device, lambda: blk.mlp("img", x, s), repeats * 2)
        rows[str(s)] = {"seconds": t, "relative": t / full, "target": s + 0.05}
    return {"full_s": full, "widths": rows}


def bench_stack(size: BenchSize, blocks, routers, img, txt, vec, device) -> dict:
    specs = [b.spec(n) for b, n in zip(blocks, routers.block_names)]
    cfg = ElasticConfig(cache_start=0.0, max_reuse=10)
    fns = [double_run_fn(b, vec) for b in blocks]
    records = []

    def dense():
        for _ in range(size.steps):
            plain_stack(blocks, img, txt, vec)

    def elastic():
        run = ElasticRun(routers, specs, PlanPolicy(cfg, plan_for(size.steps, size.blocks)), size.steps)
        for s in range(size.steps):
            run.begin_step(s, None, True)
            run_stack(run, fns, {"img": img, "txt": txt}, vec)
        records.append(run.finish())

    t_dense, t_elastic = _paired(device, dense, elastic, size.repeats)
    rec = records[-1]
    t = rec.totals()
    f = rec.flops
    ideal = (f["dense_attn"] + f["dense_mlp"]) / (f["exec_attn"] + f["exec_mlp"] + f["router"])
    measured = t_dense / t_elastic
    return {"dense_s": t_dense, "elastic_s": t_elastic, "measured_speedup": measured, "ideal_speedup": ideal,
            "efficiency": measured / ideal, "target": 0.9, "skipped": t["skipped"], "reused": t["reused"],
            "mean_width": t["mean_width"], "executed_fraction": t["executed_fraction"],
            "cache_bytes_peak": t["cache_bytes_peak"]}


def run_core_bench(size_name: str | None = None, device: str | None = None) -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size_name = size_name or ("gpu" if dev.type == "cuda" else "cpu")
    size = SIZES[size_name]
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    blocks, routers, img, txt, vec = _setup(size, dev, dtype)
    with torch.inference_mode():
        result = {
            "bench": "core", "size": size_name, "shape": size.__dict__, "dtype": str(dtype),
            "machine": machine_info(dev),
            "stack": bench_stack(size, blocks, routers, img, txt, vec, dev),
            "router": bench_router(blocks, routers, img, txt, vec, dev, size.repeats),
            "mlp_width": bench_widths(blocks, img, vec, dev, size.repeats),
            "router_full": bench_router_full(size, blocks, routers, vec, dev, dtype),
        }
    return result


def format_core(r: dict) -> str:
    m, sh = r["machine"], r["shape"]
    ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
    lines = [f"machine: {m['processor']}, {m['cpu_count']} cpus, torch {m['torch']} ({m['torch_threads']} threads), "
             f"device {m.get('gpu', m['device'])}, {r['dtype']}",
             f"block: D={sh['dim']}, heads={sh['heads']}, tokens {sh['img_tokens']} img + {sh['txt_tokens']} txt",
             "", f"{'measure':44} {'value':>10} {'target':>10}  result"]
    if r["size"] == "quick":
        lines.insert(2, "quick size: a D = 256 block, where fixed per-call costs dominate; the targets are "
                        "for the real width (--size cpu / gpu)")
    for ro in filter(None, (r["router"], r.get("router_full"))):
        lines.append(f"{'(a) router time / block time, ' + str(ro['tokens']) + ' tokens':44} {ro['fraction']:>10.2%} "
                     f"{'<= 1%':>10}  {ok(ro['fraction'] <= 0.01)}")
    for s, w in r["mlp_width"]["widths"].items():
        lines.append(f"{'(b) MLP time at width ' + s + ' / full':44} {w['relative']:>10.3f} "
                     f"{'<= ' + format(w['target'], '.2f'):>10}  {ok(w['relative'] <= w['target'])}")
    st = r["stack"]
    lines.append(f"{'(c) wall speedup / FLOP-ideal speedup':44} {st['efficiency']:>10.3f} {'>= 0.9':>10}  "
                 f"{ok(st['efficiency'] >= 0.9)}")
    lines.append(f"    plan: skipped {st['skipped']:.0%}, reused {st['reused']:.0%}, mean width {st['mean_width']:.2f}; "
                 f"ideal {st['ideal_speedup']:.2f}x, measured {st['measured_speedup']:.2f}x "
                 f"(dense {st['dense_s']:.2f} s, elastic {st['elastic_s']:.2f} s), "
                 f"cache peak {st['cache_bytes_peak'] / 2**20:.1f} MiB")
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure router cost, width slicing and stack speedup; prints a table, writes JSON")
    p.add_argument("--size", choices=sorted(SIZES), default=None,
                   help="problem size (default: 'gpu' when CUDA is available, else 'cpu')")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", default=None, help="where to write the JSON result "
                   "(default bench-results/core.json, or comfy.json with --comfy)")
    p.add_argument("--comfy", action="store_true", help="(the ComfyUI benchmark: says how to run "
                   "devtools/bench_comfy.py with ComfyUI's Python)")
    p.add_argument("--toy", action="store_true", help="quality against compute on the built-in toy model: E-DiT "
                   "(three training modes) against fewer steps, FBCache, TeaCache, a trained static model and "
                   "random / fixed plans; writes JSON and a PNG plot")
    p.add_argument("--toy-size", choices=("quick", "medium", "full"), default="medium",
                   help="with --toy: medium (3 x 8 scenes, docs/benchmarks.md; about 1.5 h on 2 CPU cores, "
                   "about 1 h once its trained variants are cached), full (3 x 16 scenes, hours) or quick (seconds, tests)")
    p.add_argument("--artifacts", default="bench-results/toy-artifacts",
                   help="with --toy: where the variants it trains are cached")
    p.set_defaults(func=_cmd)


def _comfy(args) -> int:
    """The ComfyUI benchmark is glue: it runs in ComfyUI's Python, never launched by the engine."""
    print("error: the ComfyUI benchmark runs with that ComfyUI's Python, from a checkout of the pack:\n"
          "  python devtools/bench_comfy.py [--comfyui PATH] [--size cpu|gpu] [--out FILE]", file=sys.stderr)
    return 2


def _report(out: str, result: dict, text: str) -> int:
    print(text)
    write_json(out, result)
    print(f"\nwrote {out}")
    return 0


def _cmd(args) -> int:
    if args.comfy:
        return _comfy(args)
    if args.toy:
        from .toy.report import format_report, plot, run_benchmark
        out = args.out or "bench-results/toy.json"
        result = run_benchmark(args.toy_size, args.artifacts)
        rc = _report(out, result, format_report(result))
        print(f"wrote {plot(result, os.path.splitext(out)[0] + '.png')}")
        return rc
    result = run_core_bench(args.size, args.device)
    return _report(args.out or "bench-results/core.json", result, format_core(result))
