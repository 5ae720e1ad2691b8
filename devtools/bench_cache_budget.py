"""The cache budget's price: compute and image movement against an unlimited cache, and the cache at
real size.

1. `sizes`: cache bytes at real size from the shapes (formula in elastic_core.cache.full_size_bytes),
   and the share of them that the default budget (1 GiB) holds.
2. `toy`: the toy DiT with its trained routers, 8 scenes, 20 steps, CFG. Budgets are set as shares of
   the unlimited run's peak: the shares the default budget holds at real size.
3. `comfy`: tiny real Flux / Qwen-Image models (ComfyUI's own classes through comfy.sample), routers
   forced to gate probabilities spread around the band, so that the budget has something to choose.

4. `offload`: cache_device cpu against the cache on the compute device, on a stack of reference blocks
   at real width, two of three blocks' routers held in the reuse band: outputs bit for bit, wall time, and how many
   residuals were fetched ahead and used. On CUDA this is the pinned / side-stream / prefetch path; on
   a CPU the same bank code with plain copies.

usage: python devtools/bench_cache_budget.py sizes|toy|comfy|offload [--comfyui PATH]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 2 ** 30
DEFAULT_GB = 1.0
# (name, blocks, image tokens, text tokens, D, rows per sample): Qwen-Image with true CFG (cond + uncond,
# ~200 prompt tokens); FLUX.1-dev at cfg 1 (one stream; guidance is distilled), T5 padded to 512 tokens.
FAMILIES = [("Qwen-Image 1328x1328", 60, 83 * 83, 200, 3072, 2), ("Qwen-Image 1024x1024", 60, 64 * 64, 200, 3072, 2),
            ("FLUX.1-dev 1024x1024", 57, 64 * 64, 512, 3072, 1)]
SHARES = [1.0, 0.67, 0.34, 0.21, 0.05, 0.0]  # of the unlimited peak: what 1 GiB holds at real size (`sizes`), and 0


def sizes() -> None:
    from elastic_core.cache import full_size_bytes
    print("| model | tokens (img + txt) | streams | batch 1 | batch 4 | 1 GiB holds (batch 1 / 4) |")
    print("|---|---|---|---|---|---|")
    for name, blocks, img, txt, dim, rows in FAMILIES:
        b1, b4 = (full_size_bytes(blocks, img + txt, dim, rows * n) for n in (1, 4))
        print(f"| {name} | {img} + {txt} | {rows} | {b1 / GIB:.2f} GiB | {b4 / GIB:.2f} GiB | "
              f"{min(1, DEFAULT_GB * GIB / b1):.0%} / {min(1, DEFAULT_GB * GIB / b4):.0%} |")


def _row(label, share, rec, img, free_img, dense_img, psnr):
    t = rec.totals()
    return (f"| {label} | {share:.2f} | {t['cache_bytes_peak'] / 2**20:.2f} | {t['executed_fraction']:.3f} | "
            f"{t['reused']:.3f} | {t['no_cache']:.3f} | {psnr(img, free_img):.1f} | {psnr(img, dense_img):.2f} |")


HEAD = ("| setting | budget / unlimited peak | cache peak MiB | compute vs dense | reused | no cache | "
        "PSNR vs unlimited dB | PSNR vs dense dB |\n|---|---|---|---|---|---|---|---|")


def toy() -> None:
    import torch
    from elastic_core.config import PAPER_PRESETS
    from elastic_core.toy import methods
    from elastic_core.toy.metrics import psnr
    from elastic_core.toy.pipeline import load_dit, load_toy_routers
    torch.manual_seed(0)
    model, ckpt = load_dit(), load_toy_routers()
    scenes = methods.SceneSet.make("test", 8, seed=1, size=model.cfg.image)
    steps = 20
    dense = methods.dense(model, scenes, steps, steps).images
    print(HEAD)
    for label, cfg in (("file defaults", ckpt.meta.elastic_config()),
                       ("delta 0.1, K 5", ckpt.meta.elastic_config().with_(delta=PAPER_PRESETS["qwen-image-base"].delta,
                                                                            max_reuse=5))):
        free = methods.elastic(model, ckpt.routers, cfg, scenes, steps, steps)
        peak = free.record.cache_bytes_peak
        for share in SHARES:
            out = free if share == 1.0 else methods.elastic(model, ckpt.routers, cfg.with_(cache_budget=int(share * peak)),
                                                            scenes, steps, steps)
            print(_row(label, share, out.record, out.images, free.images, dense, psnr))


def comfy(path) -> None:
    import torch
    from devtools.comfy_boot import boot, find_comfyui, version
    path = path or find_comfyui()[0]
    nodes, pack = boot(path)
    from devtools import tiny_models as tiny
    ec = pack.elastic_core
    print(f"ComfyUI {version(path)}")
    print(HEAD)
    ps = [0.2, 0.52, 0.9, 0.505, 0.58, 0.3, 0.56, 0.95, 0.51]  # band [0.5, 0.6]: 5 of 9 borderline

    def psnr(a, b):
        mse = float(((a - b) ** 2).mean())
        rng = float(b.max() - b.min())
        return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(rng ** 2 / mse)).item()

    for kind, dims in (("flux", dict(depth=3, single=6)), ("qwen", dict(layers=9))):
        model = tiny.build_from_config(kind, getattr(tiny, f"{kind}_config")(**dims), std=0.05)
        ckpt = tiny.make_routers(pack, model)
        for i, r in enumerate(ckpt.routers):
            with torch.no_grad():  # a constant gate probability per block
                r.out[2].weight.zero_()
                r.out[2].bias.fill_(tiny.logit(ps[i % len(ps)]))
        args = dict(steps=12, batch=2, size=32)
        dense_img = tiny.sample(model, kind, **args)
        base = ec.config.ElasticConfig(delta=0.1, max_reuse=5, cache_start=0.3)
        free_m = pack.nodes.patch.apply_elastic(model, ckpt, ec.policy.Policy(base))
        free_img = tiny.sample(free_m, kind, **args)
        free_rec = free_m.model_options["transformer_options"]["elastic_dit"].last_record
        for share in (1.0, 0.34, 0.21, 0.05):  # Qwen-Image 1024 / 1328, batch 4: what 1 GiB holds
            cfg = base.with_(cache_budget=int(share * free_rec.cache_bytes_peak))
            m = pack.nodes.patch.apply_elastic(model, ckpt, ec.policy.Policy(cfg))
            img = tiny.sample(m, kind, **args)
            rec = m.model_options["transformer_options"]["elastic_dit"].last_record
            print(_row(f"tiny {kind}, {len(ckpt.routers)} blocks", share, rec, img, free_img, dense_img, psnr))


def offload() -> None:
    import torch
    from elastic_core import bench
    from elastic_core.config import ElasticConfig
    from elastic_core.policy import Policy
    from elastic_core.reference import double_run_fn
    from elastic_core.runner import ElasticRun, run_stack
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = bench.SIZES["gpu" if device.type == "cuda" else "quick"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    blocks, routers, img, txt, vec = bench._setup(size, device, dtype)
    specs = [b.spec(n) for b, n in zip(blocks, routers.block_names)]
    fns = [double_run_fn(b, vec) for b in blocks]
    with torch.no_grad():  # two of three blocks borderline (reuse while they may), the third runs
        for i, r in enumerate(routers):
            r.out[2].weight.zero_()
            r.out[2].bias.fill_(2.2 if i % 3 == 0 else 0.02)  # p = 0.90 / 0.505
    out = {}

    def go(where):
        run = ElasticRun(routers, specs, Policy(ElasticConfig(cache_start=0.0, max_reuse=3, cache_device=where)),
                         size.steps)
        for s in range(size.steps):
            run.begin_step(s, None, True)
            x = run_stack(run, fns, {"img": img, "txt": txt}, vec)
        out[where] = (x, run.bank.prefetched, run.bank.prefetch_hits, run.finish())

    t_dev, t_cpu = bench._paired(device, lambda: go(None), lambda: go("cpu"), size.repeats)
    (x0, _, _, rec0), (x1, fetched, hits, rec1) = out[None], out["cpu"]
    same = all(torch.equal(x0[k], x1[k]) for k in x0)
    print(f"{device.type} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), {size.blocks} blocks, "
          f"{size.img_tokens}+{size.txt_tokens} tokens, D {size.dim}, {dtype}, {size.steps} steps; "
          f"reused {rec1.totals()['reused']:.0%}, cache peak {rec1.cache_bytes_peak / 2**20:.1f} MiB")
    print(f"cache on the device {t_dev * 1e3:.1f} ms, cache_device cpu {t_cpu * 1e3:.1f} ms "
          f"({t_cpu / t_dev:.3f}x); bit-identical outputs: {same}; fetched ahead {fetched}, used {hits}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["sizes", "toy", "comfy", "offload"])
    ap.add_argument("--comfyui", default=None)
    a = ap.parse_args(argv)
    {"sizes": sizes, "toy": toy, "offload": offload}.get(a.part, lambda: comfy(a.comfyui))()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
