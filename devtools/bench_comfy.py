"""The ComfyUI benchmark: dense vs elastic sampling on ComfyUI's own Flux and Qwen-Image classes.

Real hidden width (D = 3072, 24 heads); depth and tokens reduced on a CPU, full size on a GPU. Both
models sample the same steps through comfy.sample, alternately (dense, elastic, dense, ...), with a
fixed decision plan at the paper's rates (PAPER_RATES: half the blocks skipped, 15 % reused, mean run
width 0.6), on routers of the released layout so their cost counts. Reported: wall speedup,
the FLOP-ideal speedup from the run record, their ratio (target >= 0.9), peak memory and cache bytes.
Beside the plan, in the same process: E-DiT decisions from routers (released layout, random gate heads
around tau, so they skip and run), the routers' share of that run's time (their calls timed by forward
hooks), and ComfyUI's own EasyCache at matched compute (its reuse threshold picked from a grid so
that its share of block calls is nearest the plan's FLOP share). `--size
gpu`: Qwen-Image 60 blocks and Flux 19 + 38 at D = 3072, bf16, 1024 x 1024 (4096 image tokens), CFG.

usage: python devtools/bench_comfy.py [--comfyui PATH] [--size cpu|gpu|quick] [--out FILE]
(use the Python that runs that ComfyUI)
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from devtools.comfy_boot import boot, find_comfyui, version  # noqa: E402

SIZES = {  # per family: blocks and latent size (tokens = (latent / 2)^2)
    "cpu": {"flux": dict(depth=2, single=4), "qwen": dict(layers=4), "latent": 32, "txt": 64, "steps": 6, "repeats": 2},
    "gpu": {"flux": dict(depth=19, single=38), "qwen": dict(layers=60), "latent": 128, "txt": 512, "steps": 10,
            "repeats": 2, "cfg": 4.0},
    "quick": {"flux": dict(depth=1, single=2), "qwen": dict(layers=2), "latent": 16, "txt": 16, "steps": 4,
              "repeats": 1, "hidden": 256},
}


# The paper's settings for Qwen-Image E-DiT-turbo and FLUX.1-dev: rho_g 0.5 (the mean gate, read as the
# share of blocks that run), rho_w 0.6 (plan_for's run widths average 0.6). It gives no reuse rate: 15 %.
PAPER_RATES = dict(skip=0.5, reuse=0.15)


class PeakRSS:
    """Peak resident memory above the start, sampled every 2 ms (CPU runs)."""

    def __init__(self):
        import psutil
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss - self.base)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _peak(device, fn):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t, torch.cuda.max_memory_allocated() - base
    with PeakRSS() as m:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
    return dt, m.peak


def build(kind, size, device, dtype):
    """A ComfyUI model of the given family at real width with random weights."""
    from devtools import tiny_models as tiny
    dims = dict(size[kind])
    hidden = size.get("hidden", 3072)
    cfg = {"flux": tiny.flux_config, "qwen": tiny.qwen_config}[kind](**dims)
    if kind == "flux":
        cfg.update(hidden_size=hidden, num_heads=hidden // 128, axes_dim=[16, 56, 56], context_in_dim=64)
    else:
        cfg.update(attention_head_dim=128, num_attention_heads=hidden // 128, axes_dims_rope=(16, 56, 56),
                   joint_attention_dim=64)
    return tiny.build_from_config(kind, cfg, std=0.02, device=device, dtype=dtype)


def live_routers(ckpt, seed: int = 5):
    """Random gate heads around tau (as the released layout's routers at random): a mix of skips and runs."""
    import torch
    with torch.no_grad():
        for i, r in enumerate(ckpt.routers):
            r.out[2].weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(seed + i))
            r.out[2].bias.fill_(0.3 * (-1) ** i)
            r.width_head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(100 + seed + i))
    return ckpt


class RouterClock:
    """Wall time spent in router calls (forward hooks; synchronised on a GPU)."""

    def __init__(self, routers, device):
        import torch
        self.total, self._t0, self._sync = 0.0, 0.0, (torch.cuda.synchronize if device.type == "cuda" else lambda: None)
        self._hooks = [h for r in routers for h in (r.register_forward_pre_hook(self._pre), r.register_forward_hook(self._post))]

    def _pre(self, *_):
        self._sync()
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self._sync()
        self.total += time.perf_counter() - self._t0

    def close(self):
        for h in self._hooks:
            h.remove()


def easycache(model, threshold: float = 0.2):
    """ComfyUI's own EasyCache node on the model (a clone; its default window, 15-95 % of the steps), or
    None where this ComfyUI has none."""
    try:
        node = importlib.import_module("comfy_extras.nodes_easycache").EasyCacheNode
    except (ImportError, AttributeError):
        return None
    out = node.execute(model, threshold, 0.15, 0.95, False)
    return out.result[0] if hasattr(out, "result") else out[0]


EASYCACHE_GRID = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)  # reuse thresholds tried (the node allows 0-3)


def block_calls(model, kind, args) -> int:
    """How many times one sampling run calls the first transformer block (EasyCache skips whole steps)."""
    from devtools import tiny_models as tiny
    dm = model.get_model_object("diffusion_model")
    first = (dm.double_blocks if kind == "flux" else dm.transformer_blocks)[0]
    calls = []
    h = first.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        tiny.sample(model, kind, **args)
    finally:
        h.remove()
    return len(calls)


def matched_easycache(model, kind, args, target: float):
    """EasyCache at the threshold whose share of block calls (against dense) is nearest `target` (the
    elastic plan's FLOP share). -> (model, threshold, share, every (threshold, share) tried) or None"""
    if easycache(model) is None:
        return None
    dense, tried = block_calls(model, kind, args), []
    for th in EASYCACHE_GRID:
        tried.append((th, block_calls(easycache(model, th), kind, args) / dense))
    th, share = min(tried, key=lambda x: (abs(x[1] - target), x[0]))
    return easycache(model, th), th, share, tried


def bench_family(kind, size, device, dtype, pack, nodes):
    from devtools import tiny_models as tiny
    model = build(kind, size, device, dtype)
    ckpt = tiny.make_routers(pack, model)
    ckpt.routers.to(dtype)
    n_blocks = len(ckpt.routers)
    plan = importlib.import_module(pack.__name__ + ".elastic_core.bench").plan_for(size["steps"], n_blocks, **PAPER_RATES)
    cfg = pack.elastic_core.config.ElasticConfig(cache_start=0.0)
    plan_policy = pack.elastic_core.policy.PlanPolicy
    patched = pack.nodes.patch.apply_elastic(model, ckpt, plan_policy(cfg, plan))
    # Everything but the blocks (embeddings, final layer, sampler): the time of a run that skips all blocks.
    skip_all = pack.nodes.patch.apply_elastic(model, ckpt, plan_policy(cfg, lambda s, b: (0, 1.0)))
    live_ckpt = live_routers(tiny.make_routers(pack, model))
    live_ckpt.routers.to(device=device, dtype=dtype)
    live = pack.nodes.patch.apply_elastic(model, live_ckpt, pack.elastic_core.policy.Policy(cfg))
    args = dict(cfg=size.get("cfg", 1.0), steps=size["steps"], size=size["latent"], tokens=size["txt"], device=device,
                dtype=dtype)
    models = [("dense", model), ("elastic", patched), ("outside", skip_all), ("routers", live)]
    f = patched_flops(pack, patched, kind, args)
    target = (f["exec_attn"] + f["exec_mlp"] + f["router"]) / (f["dense_attn"] + f["dense_mlp"])
    ec = matched_easycache(model, kind, args, target)
    if ec is not None:
        models.append(("easycache", ec[0]))
    runs = {name: [] for name, _ in models}
    clock = RouterClock(live_ckpt.routers.routers, device)
    for r in range(size["repeats"] + 1):  # the first round warms up
        for name, m in models:
            before = clock.total
            runs[name].append(_peak(device, lambda: tiny.sample(m, kind, **args)))
            if name == "routers":
                router_s = clock.total - before  # the last "routers" run's time in router calls
    clock.close()
    t = {k: statistics.median(x[0] for x in v[1:]) for k, v in runs.items()}
    mem = {k: max(x[1] for x in v[1:]) for k, v in runs.items()}
    live_rec = live.model_options["transformer_options"][pack.nodes.patch.HOLDER_KEY].last_record.totals()
    rec = patched.model_options["transformer_options"][pack.nodes.patch.HOLDER_KEY].last_record
    tot = rec.totals()
    f = rec.flops
    ideal = (f["dense_attn"] + f["dense_mlp"]) / (f["exec_attn"] + f["exec_mlp"] + f["router"])
    # The wall time elastic sampling should take if the blocks' share shrank by exactly the FLOP ratio.
    expected = t["outside"] + (t["dense"] - t["outside"]) / ideal
    del model, patched, skip_all, live
    extra = {"routers_s": t["routers"], "routers_speedup": t["dense"] / t["routers"], "routers_skipped": live_rec["skipped"],
             "routers_share": clock_share(runs["routers"], router_s), "per_step_s": {k: v / size["steps"] for k, v in t.items()},
             "peak_mem": mem, "easycache_s": t.get("easycache"), "cfg": args["cfg"], "plan_compute": target,
             "easycache_threshold": ec and ec[1], "easycache_compute": ec and ec[2], "easycache_tried": ec and ec[3]}
    return {**extra,"family": kind, "blocks": n_blocks, "img_tokens": (size["latent"] // 2) ** 2, "txt_tokens": size["txt"],
            "steps": size["steps"], "dense_s": t["dense"], "elastic_s": t["elastic"],
            "measured_speedup": t["dense"] / t["elastic"], "ideal_speedup": ideal,
            "efficiency": t["dense"] / t["elastic"] / ideal, "outside_blocks_s": t["outside"],
            "expected_elastic_s": expected, "efficiency_blocks": expected / t["elastic"], "skipped": tot["skipped"], "reused": tot["reused"],
            "mean_width": tot["mean_width"], "peak_mem_dense": mem["dense"], "peak_mem_elastic": mem["elastic"],
            "cache_bytes_peak": tot["cache_bytes_peak"]}


def patched_flops(pack, patched, kind, args) -> dict:
    """The FLOP counts of one run of the plan (a sampling run; its record's flops)."""
    from devtools import tiny_models as tiny
    tiny.sample(patched, kind, **args)
    return patched.model_options["transformer_options"][pack.nodes.patch.HOLDER_KEY].last_record.flops


def clock_share(runs, router_s: float) -> float:
    """The routers' share of the last "routers" run's wall time."""
    return router_s / runs[-1][0] if runs and runs[-1][0] > 0 else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", default=None, help="ComfyUI checkout (default: as the tests find it)")
    ap.add_argument("--size", choices=sorted(SIZES), default=None)
    ap.add_argument("--out", default="bench-results/comfy.json")
    a = ap.parse_args(argv)
    path, how = (a.comfyui, "--comfyui") if a.comfyui else find_comfyui()
    if path is None:
        print(f"error: {how}", file=sys.stderr)
        return 2
    nodes, pack = boot(path)
    import torch

    machine_info = importlib.import_module(pack.__name__ + ".elastic_core.bench").machine_info
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size_name = a.size or ("gpu" if device.type == "cuda" else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    rows = []
    with torch.inference_mode():
        for kind in ("flux", "qwen"):
            rows.append(bench_family(kind, SIZES[size_name], device, dtype, pack, nodes))
    result = {"bench": "comfy", "comfyui": version(path), "size": size_name, "dtype": str(dtype),
              "machine": machine_info(device), "rows": rows}
    print(format_rows(result))
    importlib.import_module(pack.__name__ + ".elastic_core.bench").write_json(a.out, result)
    print(f"\nwrote {a.out}")
    return 0


def format_rows(r: dict) -> str:
    m = r["machine"]
    mib = 2 ** 20
    lines = [f"ComfyUI {r['comfyui']}; machine: {m['processor']}, {m['cpu_count']} cpus, torch {m['torch']}, "
             f"device {m.get('gpu', m['device'])}, {r['dtype']}, D = 3072 unless --size quick",
             f"{'family':8} {'blocks':>6} {'tokens':>11} {'dense s':>8} {'elastic s':>9} {'speedup':>8} "
             f"{'ideal':>6} {'ratio':>6} {'peak MiB dense/elastic':>23} {'cache MiB':>9}"]
    for x in r["rows"]:
        lines.append(f"{x['family']:8} {x['blocks']:>6} {str(x['img_tokens']) + '+' + str(x['txt_tokens']):>11} "
                     f"{x['dense_s']:>8.2f} {x['elastic_s']:>9.2f} {x['measured_speedup']:>7.2f}x "
                     f"{x['ideal_speedup']:>5.2f}x {x['efficiency']:>6.2f} "
                     f"{x['peak_mem_dense'] / mib:>11.0f}/{x['peak_mem_elastic'] / mib:<11.0f} "
                     f"{x['cache_bytes_peak'] / mib:>9.1f}")
        lines.append(f"{'':8} plan: skipped {x['skipped']:.0%}, reused {x['reused']:.0%}, mean width "
                     f"{x['mean_width']:.2f}; target ratio >= 0.9")
        ec = "n/a" if x.get("easycache_s") is None else (
            f"{x['dense_s'] / x['easycache_s']:.2f}x at threshold {x['easycache_threshold']} "
            f"({x['easycache_compute']:.0%} of the block calls; the plan's FLOPs {x['plan_compute']:.0%})")
        lines.append(f"{'':8} routers deciding (random gates): {x['routers_speedup']:.2f}x, skipped "
                     f"{x['routers_skipped']:.0%}, routers {x['routers_share']:.1%} of its time; EasyCache: {ec}; "
                     f"per step dense {x['per_step_s']['dense'] * 1e3:.0f} ms, cfg {x['cfg']}")
        lines.append(f"{'':8} outside the blocks {x['outside_blocks_s']:.2f} s per run; counting it, the FLOP "
                     f"ratio predicts {x['expected_elastic_s']:.2f} s: measured/predicted speed "
                     f"{x['efficiency_blocks']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
