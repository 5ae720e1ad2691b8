"""GPU memory of Train Elastic Router at full size, estimated from parts (CPU, a real ComfyUI).

    COMFYUI_PATH=... python -m devtools.train_memory_estimate [--rank 16] [--families flux,zimage] [--out FILE]

Per family (FLUX.1-dev, Chroma, Qwen-Image, Flux.2-dev, Flux.2 Klein 4B / 9B, Z-Image, Qwen-Image-Edit
with one reference image), 1024x1024, batch 1, weights in fp8 (as users load them on 12-24 GB cards;
compute in bf16), gradient checkpointing on, a LoRA of `--rank`, routers in the compact layout
(recomputed in the backward pass) and in the released layout (kept):
- model weights, router and LoRA parameters, adapted-weight sizes: counted from ComfyUI's own model
  classes built at full size on the meta device (no memory) and the pack's own adapters and LoRA targets;
- what a router keeps for its backward pass: measured with autograd's saved-tensor hooks on a real
  router of the family's width and conditioning with bf16 block inputs, scaled by the token count
  (those tensors grow linearly);
- the activations of the one block recomputed in the backward pass: the per-token figure measured by
  `python -m devtools.train_memory` (peak RSS, a Flux double + single block at D = 3072, fp32), halved
  for bf16 (BLOCK_MIB_PER_TOKEN) and scaled by the family's width; not measured for the other families.
Not included: the CUDA context and the allocator's slack (not measurable without a GPU).
"""
from __future__ import annotations

import argparse
from elastic_core.results import write_json

GB = 1e9
BLOCK_MIB_PER_TOKEN = 0.17  # bf16 activations of one Flux block per token (README: 0.34 MiB measured in fp32)
# image + text tokens at 1024x1024 (Flux.2: 1/16 VAE, patch 1 -> 64 x 64; Qwen-Image-Edit: one 1024x1024
# reference image adds its 4096 tokens to the blocks' sequence)
TOKENS = {"flux": 4096 + 512, "chroma": 4096 + 512, "qwen": 4096 + 256, "flux2": 4096 + 512,
          "flux2_klein4b": 4096 + 512, "flux2_klein9b": 4096 + 512,
          "zimage": 4096 + 512, "qwen_edit": 4096 + 4096 + 256}
NAMES = {"flux": "FLUX.1-dev", "chroma": "Chroma", "qwen": "Qwen-Image", "flux2": "Flux.2-dev",
         "flux2_klein4b": "Flux.2 Klein 4B", "flux2_klein9b": "Flux.2 Klein 9B", "zimage": "Z-Image (Turbo)",
         "qwen_edit": "Qwen-Image-Edit (one reference image)"}
# Flux.2 sizes: comfy/model_detection.py reads hidden_size, depths and context_in_dim from the checkpoint
# (heads = hidden_size // 128, the sum of Flux.2's axes_dim); the numbers are Black Forest Labs' released
# transformer configs; context_in_dim = 3 stacked text-encoder layers (comfy/text_encoders/flux.py) of
# Mistral-3 Small 24B (5120), Qwen3-4B (2560) and Qwen3-8B (4096) (comfy/text_encoders/llama.py).
FLUX2 = {"flux2": dict(hidden_size=6144, depth=8, depth_single_blocks=48, context_in_dim=3 * 5120, klein=False),
         "flux2_klein4b": dict(hidden_size=3072, depth=5, depth_single_blocks=20, context_in_dim=3 * 2560, klein=True),
         "flux2_klein9b": dict(hidden_size=4096, depth=8, depth_single_blocks=24, context_in_dim=3 * 4096, klein=True)}
# Z-Image: comfy/model_detection.py's dim == 3840 branch (heads, axes, rope, ffn multiplier, modulation);
# 30 layers and cap_feat_dim 2560 (Qwen3-4B) from the released checkpoint; refiners and multiple_of:
# NextDiT's defaults
ZIMAGE = dict(patch_size=2, in_channels=16, dim=3840, n_layers=30, n_heads=30, n_kv_heads=30,
              ffn_dim_multiplier=8.0 / 3.0, qk_norm=True, cap_feat_dim=2560,
              axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0,
              z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32)


def full_size(kind: str):
    """ComfyUI's diffusion model of `kind` at its released size, on the meta device."""
    import torch

    import comfy.ldm.chroma.model
    import comfy.ldm.flux.model
    import comfy.ldm.qwen_image.model
    import comfy.ops
    from devtools import tiny_models as tiny
    ops, kw = comfy.ops.disable_weight_init, dict(device="meta", dtype=torch.bfloat16)
    if kind in ("qwen", "qwen_edit"):  # the edit model is Qwen-Image's class at the same size
        return comfy.ldm.qwen_image.model.QwenImageTransformer2DModel(operations=ops, **kw)
    if kind in FLUX2:
        size = dict(FLUX2[kind])
        cfg = tiny.flux2_config(klein=size.pop("klein")) | size | dict(num_heads=size["hidden_size"] // 128,
                                                                       axes_dim=[32, 32, 32, 32])
        return comfy.ldm.flux.model.Flux(operations=ops, **cfg, **kw)
    if kind == "zimage":
        import comfy.ldm.lumina.model
        return comfy.ldm.lumina.model.NextDiT(operations=ops, **ZIMAGE, **kw)
    big = dict(hidden_size=3072, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56],
               context_in_dim=4096)
    if kind == "flux":
        cfg = tiny.flux_config() | big | dict(in_channels=16, vec_in_dim=768)
        return comfy.ldm.flux.model.Flux(operations=ops, **cfg, **kw)
    cfg = tiny.chroma_config() | big | dict(in_channels=64, out_dim=3072, hidden_dim=5120, n_layers=5)
    return comfy.ldm.chroma.model.Chroma(operations=ops, **cfg, **kw)


def router_saved_bytes_per_token(config, recompute: bool, tokens: int = 512) -> float:
    """Bytes autograd keeps for one router call's backward, per token, for a router of `config` (bf16 inputs)."""
    import torch

    from elastic_core.router import Router
    from elastic_core.train import route
    router = Router(config).init_full_capacity()
    x, c = torch.randn(1, tokens, config.dim, dtype=torch.bfloat16), torch.randn(1, config.cond)
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        route(router, [x], c, recompute)
    return sum(seen.values()) / tokens


def parts(pack, kind: str, rank: int, layout: str, recompute: bool) -> dict:
    from elastic_core.router import Router
    dm = full_size(kind)
    adapter = pack.nodes.adapters.adapter_for(dm)
    refs = adapter.blocks(dm)
    targets = pack.nodes.lora_train.lora_targets(dm, refs)
    n_tok, n_blk = TOKENS[kind], len(refs)
    per_block = {}
    for t in targets:  # full-size adapted weights per block
        block = next(r.path for r in refs if t.path.startswith(r.path + "."))
        per_block[block] = per_block.get(block, 0) + t.in_features * t.out_features
    import torch
    config = adapter.router_config(dm).with_layout(layout)
    with torch.device("meta"):
        router_params = sum(p.numel() for p in Router(config).parameters())
    saved = router_saved_bytes_per_token(config, recompute) * n_tok
    one = router_saved_bytes_per_token(config, False) * n_tok  # the router recomputed in the backward pass
    lora_params = sum(rank * (t.in_features + t.out_features) for t in targets)
    rows = {
        "model weights (fp8), frozen": sum(p.numel() for p in dm.parameters()),
        f"routers: {n_blk} x {router_params / 1e6:.2f} M parameters ({layout}), fp32, with gradients and Adam's "
        "two moments (16 B each)": n_blk * router_params * 16,
        "what the routers keep for their backward pass" + (" (recomputed: only the conditioning)" if recompute else ""):
            n_blk * saved,
        "one router recomputed in the backward pass" if recompute else "": one if recompute else 0,
        f"saved block inputs ({n_blk} x {n_tok} tokens x {refs[0].spec.dim}, bf16)": n_blk * n_tok * refs[0].spec.dim * 2,
        "one block recomputed in the backward pass (bf16 activations)":  # scaled by width from D = 3072
            BLOCK_MIB_PER_TOKEN * 2 ** 20 * n_tok * refs[0].spec.dim / 3072,
        f"the LoRA, rank {rank}: {lora_params / 1e6:.0f} M parameters, fp32, with gradients and Adam's two moments":
            lora_params * 16,
        "the largest block's adapted weights (W + up @ down) and their gradients, bf16": max(per_block.values()) * 2 * 2,
    }
    rows.pop("", None)
    return {"family": NAMES[kind], "blocks": n_blk, "tokens": n_tok, "layout": layout, "recompute": recompute,
            "rank": rank, "parts_bytes": rows, "total_bytes": sum(rows.values())}


def table(r: dict) -> str:
    lines = [f"**{r['family']}** ({r['blocks']} blocks, {r['tokens']} tokens, {r['layout']} routers"
             f"{', recomputed' if r['recompute'] else ''}, LoRA rank {r['rank']})", "", "| part | size |", "|---|---|"]
    lines += [f"| {k} | {v / GB:.2f} GB |" for k, v in r["parts_bytes"].items()]
    lines.append(f"| total | **{r['total_bytes'] / GB:.1f} GB** |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.train_memory_estimate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--out", default=None)
    ap.add_argument("--families", default=",".join(NAMES), help=f"comma-separated, of: {', '.join(NAMES)}")
    a = ap.parse_args(argv)
    kinds = [k.strip() for k in a.families.split(",") if k.strip()]
    if bad := [k for k in kinds if k not in NAMES]:
        ap.error(f"--families: unknown {', '.join(bad)}; expected some of {', '.join(NAMES)}")
    from devtools.comfy_boot import boot, find_comfyui
    _, pack = boot(find_comfyui()[0])
    rows = []
    for kind in kinds:
        for layout, recompute in (("compact", True), ("released", False)):
            rows.append(parts(pack, kind, a.rank, layout, recompute))
            print(table(rows[-1]) + "\n", flush=True)
    if a.out:
        write_json(a.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
