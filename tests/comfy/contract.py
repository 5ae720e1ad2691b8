"""What every family must show under Elastic DiT, as checks a family's test file calls with its own
tiny model and its own `sample(model, **kw) -> latent` (imports nothing of ComfyUI at import time)."""
from __future__ import annotations

import torch

from tests.comfy.records import REUSE, REUSE_BAND, RUN, block_refs, event_rows


def cache_reuses_at_most_k_times(env, model, sample, streams: int = 2) -> None:
    """Every block in the reuse band, K = 2, 7 steps: run, reuse, reuse, run, ... per block, stream
    and sample; with the cache off nothing is reused and the result differs."""
    nodes, pack, tiny, el = env
    n = len(block_refs(pack, model))
    ckpt = el.make_routers(pack, model)
    for r in ckpt.routers:
        el.force(r, p=REUSE_BAND)
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0, max_reuse=2)
    out = sample(patched, steps=7)
    rec = el.last_record(patched)
    acts: dict = {}
    for e in event_rows(rec):
        acts.setdefault((e["block"], e["stream"], e["sample"]), []).append(e["action"])
    assert len(acts) == n * streams
    for key, seq in acts.items():
        assert seq == [RUN, REUSE, REUSE, RUN, REUSE, REUSE, RUN], (key, seq)
    assert {e["reuse"] for e in event_rows(rec) if e["action"] == REUSE} == {1, 2}
    off = el.apply(nodes, model, ckpt, cache=False, cache_start_percent=0.0, max_reuse=2)
    assert not torch.allclose(out, sample(off, steps=7), atol=1e-5)
    assert el.last_record(off).counts()["reuse"] == 0


def input_model_is_never_changed(env, model, sample) -> None:
    """Apply (skip, reuse and width on) leaves the user's MODEL as it was: same samples, no twin, hook,
    object patch or wrapper left, also after the patched clone was loaded and unloaded."""
    import comfy.model_management
    import comfy.patcher_extension
    nodes, pack, tiny, el = env
    dm = model.get_model_object("diffusion_model")
    types = {name: type(mod) for name, mod in dm.named_modules()}
    before = sample(model)
    ckpt = el.make_routers(pack, model)
    el.force(ckpt.routers[0], p=REUSE_BAND)
    el.force(ckpt.routers[1], p=0.01)
    el.force(ckpt.routers[len(ckpt.routers) - 1], width_idx=0)
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0)
    assert not torch.allclose(sample(patched), before, atol=1e-4)
    assert torch.equal(sample(model), before)
    comfy.model_management.load_models_gpu([patched])  # its object patches go in
    assert any(type(m).__name__.startswith("Elastic") for m in dm.modules())
    comfy.model_management.load_models_gpu([model])  # loading the plain model unloads the clone
    assert {name: type(mod) for name, mod in dm.named_modules()} == types, "twins left in the model"
    assert torch.equal(sample(model), before)
    comfy.model_management.unload_all_models()
    assert torch.equal(sample(model), before)
    to = model.model_options.get("transformer_options", {})
    assert not to.get("patches_replace", {}).get("dit") and not model.object_patches
    for wt in (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, comfy.patcher_extension.WrappersMP.APPLY_MODEL):
        assert "elastic_dit" not in model.wrappers.get(wt, {})
    assert "elastic_dit" not in str(model.model_options)


def linear_macs(module) -> int:
    """Multiply-adds per token of every nn.Linear in `module` (its weight's size)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))
