"""Memory of Train Elastic Router at full Flux width, with and without a LoRA (CPU, a real ComfyUI).

    COMFYUI_PATH=... python -m devtools.train_memory [--ranks 0 16 64] [--latents 32 64] [--steps 2]

ComfyUI's own Flux class at D = 3072 (24 heads, T5 width 4096), 1 double + 1 single block, random
weights, fp32. Each configuration runs in a fresh process: the model is built, then the node trains
(1 dense teacher run of 2 steps, then `steps` training steps, batch 1) while the resident memory is
sampled every 2 ms; reported: the peak above the memory with the model loaded. Latent 32 / 64 are
256 / 1024 image tokens, + 64 text tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

GIB = 2 ** 30


def one(rank: int, latent: int, checkpointing: bool, steps: int) -> dict:
    import torch

    from devtools.bench_comfy import PeakRSS
    from devtools.comfy_boot import boot, find_comfyui
    nodes, pack = boot(find_comfyui()[0])
    import folder_paths
    import tempfile
    from devtools import tiny_models as tiny
    out = tempfile.mkdtemp()
    for folder in ("elastic_routers", "loras"):
        folder_paths.add_model_folder_path(folder, os.path.join(out, folder), is_default=True)
    cfg = tiny.flux_config(depth=1, single=1)
    cfg.update(hidden_size=3072, num_heads=24, axes_dim=[16, 56, 56], context_in_dim=4096, vec_in_dim=768)
    with torch.inference_mode():
        model = tiny.build_from_config("flux", cfg, std=0.02)
        pos, _ = tiny.conds("flux", 1, 0, 64, 4096)
        pos[0][1]["pooled_output"] = torch.randn(1, 768)
        lat = {"samples": tiny.latent("flux", 1, latent)}
    node = nodes.NODE_CLASS_MAPPINGS["ElasticDiTTrainRouter"]()
    with PeakRSS() as m, torch.inference_mode():
        node.train(model, pos, lat, steps=steps, learning_rate=1e-3, rho_g=0.5, rho_w=0.6, filename="mem", seed=0,
                   sampling_steps=2, teacher_runs=1, gradient_checkpointing=checkpointing, save_every=1000,
                   lora_rank=rank)
    dm = model.get_model_object("diffusion_model")
    refs = pack.nodes.adapters.adapter_for(dm).blocks(dm)
    targets = pack.nodes.lora_train.lora_targets(dm, refs)
    lora_params = sum(rank * (t.out_features + t.in_features) for t in targets)
    router_params = len(refs) * sum(p.numel() for p in tiny.make_routers(pack, model).routers[0].parameters())
    return {"rank": rank, "latent": latent, "tokens": (latent // 2) ** 2 + 64, "checkpointing": checkpointing,
            "peak_gib": m.peak / GIB, "lora_params": lora_params, "router_params": router_params,
            "lora_params_double": sum(rank * (t.out_features + t.in_features) for t in targets
                                      if t.path.startswith("double_blocks.0.")),
            "lora_params_single": sum(rank * (t.out_features + t.in_features) for t in targets
                                      if t.path.startswith("single_blocks.0."))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.train_memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[0, 16, 64])
    ap.add_argument("--latents", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # rank,latent,checkpointing in this process
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.one:
        r, lat, ck = a.one.split(",")
        print(json.dumps(one(int(r), int(lat), ck == "1", a.steps)))
        return 0
    rows = []
    for lat in a.latents:
        for ck in (1, 0):
            for r in a.ranks:
                p = subprocess.run([sys.executable, "-m", "devtools.train_memory", "--one", f"{r},{lat},{ck}",
                                    "--steps", str(a.steps)], capture_output=True, text=True)
                if p.returncode != 0:
                    print(p.stderr[-3000:], file=sys.stderr)
                    return 1
                rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
                x = rows[-1]
                print(f"tokens {x['tokens']:>5}  checkpointing {'on ' if ck else 'off'}  rank {r:>3}: "
                      f"peak {x['peak_gib']:.2f} GiB above the loaded model (LoRA {x['lora_params'] / 1e6:.1f} M "
                      f"parameters)", flush=True)
    if a.out:
        from elastic_core.results import write_json
        write_json(a.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
