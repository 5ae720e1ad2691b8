"""How far ComfyUI + this pack lands from the authors' released code, one departure at a time, on a
tiny Qwen-Image (4 blocks, D = 64) with the same weights and released-layout routers in both.

Prints the relative distance of the final latents (|a - b| / |b|) and how many skip decisions differ.
    COMFYUI_PATH=... python -m devtools.authors_departures
Needs the authors' code beside the project (see devtools/authors_ref.py).
"""
from __future__ import annotations

import tests.comfy  # noqa: F401  (bind our `tests` package before ComfyUI's joins sys.path)
from devtools.comfy_boot import boot, find_comfyui

NODES, PACK = boot(find_comfyui()[0])

import os  # noqa: E402
import tempfile  # noqa: E402

import torch  # noqa: E402
from comfy import sample as comfy_sample, samplers as comfy_samplers  # noqa: E402

from devtools import authors_ref as ar  # noqa: E402
from devtools import tiny_models as tm  # noqa: E402
from tests.comfy import elastic as el  # noqa: E402

LAYERS, CFG = 4, 4.0
BAND = [0.99, 0.01, 0.505, 0.505]  # open (random widths), skipped, two in the reuse band
OPEN = [0.99] * LAYERS


def compare(mod, gates, steps=30, size=16, timestep_dtype=torch.float32, router_seed=0, **apply_kw) -> dict:
    model = tm.build("qwen", seed=3, layers=LAYERS, std=0.1)
    dm = model.get_model_object("diffusion_model")
    state = ar.released_router_state(LAYERS, dm.txt_in.out_features, gates=gates, seed=router_seed)
    path = ar.write_released(os.path.join(tempfile.mkdtemp(), "e-dit.safetensors"), dm.state_dict(), state)
    ckpt = PACK.elastic_core.checkpoint.load_routers(path)
    patched = el.apply(NODES, model, ckpt, **apply_kw)
    ours = tm.sample(patched, "qwen", cfg=CFG, steps=steps, size=size)
    rec = el.last_record(patched)
    lat = tm.latent("qwen", size=size)
    sigmas = comfy_samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
    pos, neg = tm.conds("qwen", 1, 0, 8, dm.txt_in.in_features)
    trace = []
    x = ar.sample(ar.authors_dit(mod, dm, state), comfy_sample.prepare_noise(lat, 0)[:, :, 0], sigmas, pos[0][0],
                  neg[0][0], CFG, timestep_dtype=timestep_dtype, trace=trace)
    ref = model.model.process_latent_out(x.unsqueeze(2))
    theirs = {(j // (2 * LAYERS), (j // LAYERS) % 2, j % LAYERS) for j, (p, _) in enumerate(trace) if p < 0.5}
    ev = rec.events
    names = {"cond": 0, "uncond": 1}
    mine = {(ev["step"][j], names[rec.streams[ev["stream"][j]]], ev["block"][j]) for j in range(len(ev["step"]))
            if ev["action"][j] == PACK.elastic_core.stats.SKIP}
    return {"rel": float((ours - ref).norm() / ref.norm()), "skips_differ": len(theirs ^ mine),
            "calls": steps * 2 * LAYERS, "out": ours, "ref": ref}


def main() -> None:
    found, how = ar.find_authors()
    if found is None:
        raise SystemExit(how)
    mod = ar.load_module(found)
    rows = []

    def row(name, r, note=""):
        rows.append((name, r["rel"], r["skips_differ"], r["calls"], note))
        print(f"{name:58s} {r['rel']:9.2e}  {r['skips_differ']:3d}/{r['calls']} skip decisions differ  {note}",
              flush=True)

    row("30 steps, released defaults (baseline)", compare(mod, BAND))
    row("  ... authors_activation off (ComfyUI's tanh-GELU)", compare(mod, BAND, authors_activation=False))
    row("cache window, 20 steps (pack: from step 10; released: 15)", compare(mod, BAND, steps=20))
    row("  ... 20 steps, cache_start_percent moved to step 15", compare(mod, BAND, steps=20, cache_start_percent=0.7))
    b = compare(mod, BAND)
    t = compare(mod, BAND, timestep_dtype=torch.bfloat16)
    row("bf16 timesteps (released pipeline) vs float32", {**t, "rel": float((t["ref"] - b["ref"]).norm() / b["ref"].norm())},
        "authors vs authors")
    row("random gate heads around tau (step counter + bank parity)", compare(mod, None, router_seed=1))
    row("  ... another router seed", compare(mod, None, router_seed=2))
    row("RoPE, 9 x 9 token grid (odd), all blocks open, 4 steps", compare(mod, OPEN, steps=4, size=18))
    row("  ... 8 x 8 grid (even), same", compare(mod, OPEN, steps=4, size=16))


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    main()
