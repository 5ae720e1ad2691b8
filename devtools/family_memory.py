"""Router-training memory at real size for the families added in late 2026 (Flux.2, Z-Image,
Qwen-Image-Edit), estimated from the parts as docs/training.md does for FLUX.1-dev: an estimate, not a
GPU measurement. Batch 1, bf16 weights, gradient checkpointing on, 1024x1024 output.

    python -m devtools.family_memory
"""
from __future__ import annotations

GB = 1e9
# the per-token activation of one recomputed block, measured for a Flux block at D = 3072 in bf16
# (docs/training.md: ~0.17 MiB per token and block), scaled by width
RECOMPUTE_PER_TOKEN_D = 0.17 * 2 ** 20 / 3072

# name: (blocks, D, conditioning width, parameters of the whole DiT, tokens the blocks see)
FAMILIES = {
    "Flux.2-dev": (56, 6144, 6144, 32.2e9, 4096 + 512),
    "Flux.2 Klein 4B": (25, 3072, 3072, 3.9e9, 4096 + 512),
    "Flux.2 Klein 9B": (32, 4096, 4096, 9.1e9, 4096 + 512),
    "Z-Image (Turbo)": (30, 3840, 256, 6.15e9, 4096 + 512),
    "Qwen-Image-Edit (one reference image)": (60, 3072, 3072, 20.4e9, 4096 + 4096 + 256),
}


def router_params(d: int, c: int, hidden: int = 128, widths: int = 4) -> int:
    """elastic_core.router.Router: SiLU -> Linear(C, 3D); Linear(D, H) -> ReLU -> Linear(H, 1); Linear(H, S)."""
    return c * 3 * d + 3 * d + d * hidden + hidden + hidden + 1 + hidden * widths + widths


def estimate(blocks: int, d: int, c: int, params: float, tokens: int) -> dict[str, float]:
    parts = {
        "weights (bf16)": 2 * params,
        "routers + grads + Adam (fp32, 16 B)": blocks * router_params(d, c) * 16,
        "saved block inputs (bf16)": blocks * tokens * d * 2,
        "router backward saves (fp32, 2 per block)": blocks * tokens * d * 4 * 2,
        "one block recomputed": tokens * d * RECOMPUTE_PER_TOKEN_D,
    }
    parts["total"] = sum(parts.values())
    return {k: v / GB for k, v in parts.items()}


def main() -> None:
    print("| model | blocks | D | tokens | weights | routers + Adam | activations | total |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (n, d, c, p, t) in FAMILIES.items():
        e = estimate(n, d, c, p, t)
        act = e["saved block inputs (bf16)"] + e["router backward saves (fp32, 2 per block)"] + e["one block recomputed"]
        print(f"| {name} | {n} | {d} | {t} | {e['weights (bf16)']:.1f} GB | {e['routers + grads + Adam (fp32, 16 B)']:.1f} GB "
              f"| {act:.1f} GB | **{e['total']:.0f} GB** |")


if __name__ == "__main__":
    main()
