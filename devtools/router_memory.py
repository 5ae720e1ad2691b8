"""The released routers at real width on the CPU, and the memory a Qwen-Image run needs per base format.

    COMFYUI_PATH=... python -m devtools.router_memory [--tokens 7145]

Measures (nothing is estimated from the paper): one released-shape router (D = 3072, H = 128) built from
the pack's own Router, its parameters and bytes, 60 of them, the time of one router call at 1328 x 1328
(83 x 83 image tokens + 256 text tokens, CFG batch of 2) split into the timestep-only modulation and the
per-token part; and the real Qwen-Image DiT's weights, counted on the meta device from ComfyUI's own
class, stored as bf16, fp8, GGUF Q8_0 (34 bytes per 32 values) and Q4_K (144 bytes per 256), with the
E-DiT LoRA (rank 64 on every linear the release changed: here every 2-D weight of the blocks, an upper
bound) and the cache (one residual of both streams per block and CFG stream, bf16).
"""
from __future__ import annotations

import argparse
import time

import tests.comfy  # noqa: F401  (bind our `tests` package before ComfyUI's joins sys.path)
from devtools.comfy_boot import boot, find_comfyui

NODES, PACK = boot(find_comfyui()[0])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import comfy.ldm.qwen_image.model as qm  # noqa: E402
import comfy.ops  # noqa: E402

GB = 1e9
STORE = {"bf16": 2.0, "fp8": 1.0, "GGUF Q8_0": 34 / 32, "GGUF Q4_K": 144 / 256}


def _time(fn, reps: int = 3) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def router_part(tokens: int, dtype=torch.float32) -> dict:
    """Timed in float32: CPUs without bf16 matrix units run bf16 matmuls many times slower."""
    ec = PACK.elastic_core
    r = ec.router.Router(ec.config.RouterConfig(dim=3072)).to(dtype)
    params = sum(p.numel() for p in r.parameters())
    mod = r.img_mod[1].weight.numel() + r.img_mod[1].bias.numel()
    x, temb = torch.randn(2, tokens, 3072, dtype=dtype), torch.randn(2, 3072, dtype=dtype)
    with torch.no_grad():
        t_all = _time(lambda: r(x, temb))
        t_mod = _time(lambda: F.linear(F.silu(temb), r.img_mod[1].weight, r.img_mod[1].bias))
    return {"params": params, "mod_share": mod / params, "bytes": params * 2,  # stored bf16, as released
            "ms_call": 1e3 * t_all, "ms_mod": 1e3 * t_mod}


def dit_parts(tokens: int) -> dict:
    with torch.device("meta"):
        dm = qm.QwenImageTransformer2DModel(operations=comfy.ops.disable_weight_init)
    n2d = sum(p.numel() for k, p in dm.named_parameters() if p.dim() == 2 and "transformer_blocks" in k)
    total = sum(p.numel() for p in dm.parameters())
    lora = sum(64 * (p.shape[0] + p.shape[1]) for k, p in dm.named_parameters()
               if p.dim() == 2 and "transformer_blocks" in k)
    cache = len(dm.transformer_blocks) * 2 * tokens * 3072 * 2  # blocks x CFG streams x tokens x D x bf16
    return {"params": total, "quantizable": n2d, "lora_bytes": lora * 2, "cache_bytes": cache}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=83 * 83 + 256)
    a = ap.parse_args()
    torch.set_num_threads(2)
    r = router_part(a.tokens)
    print(f"one router: {r['params'] / 1e6:.1f} M parameters ({100 * r['mod_share']:.1f} % modulation), "
          f"{r['bytes'] / 2**20:.0f} MiB bf16; 60 routers: {60 * r['params'] / 1e9:.2f} B, {60 * r['bytes'] / GB:.2f} GB")
    print(f"router call, {a.tokens} tokens, batch 2, float32, CPU: {r['ms_call']:.0f} ms, of which the modulation "
          f"{r['ms_mod']:.1f} ms; 60 calls: {60 * r['ms_call'] / 1e3:.2f} s per step")
    block, router = 24 * 3072 ** 2, 2 * 3072 * 128  # FLOPs per token: a block's linears (12 D^2 MACs), a router's
    print(f"router / block FLOPs per token: {100 * router / block:.2f} % (attention not counted: the share is smaller)")
    d = dit_parts(a.tokens)
    rest = d["params"] - d["quantizable"]
    print(f"Qwen-Image DiT: {d['params'] / 1e9:.2f} B parameters ({d['quantizable'] / 1e9:.2f} B in block matrices)")
    print(f"| base | weights | + LoRA r64 | + routers | + cache (all 60 blocks) | total |")
    for name, b in STORE.items():
        w = (d["quantizable"] * b + rest * 2) / GB
        tot = w + d["lora_bytes"] / GB + 60 * r["bytes"] / GB + d["cache_bytes"] / GB
        print(f"| {name} | {w:.1f} GB | {d['lora_bytes'] / GB:.2f} GB | {60 * r['bytes'] / GB:.2f} GB | "
              f"{d['cache_bytes'] / GB:.2f} GB | {tot:.1f} GB |")


if __name__ == "__main__":
    main()
