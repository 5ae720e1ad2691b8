"""Qwen-Image-Edit (2509 / 2511: ComfyUI's QwenImage class with reference latents in the image
stream) under Elastic DiT, on the tiny Qwen-Image model sampled with a reference latent, as
ReferenceLatent / TextEncodeQwenImageEditPlus put it on the conditioning.

The edit models are the Qwen-Image family (same class, blocks and widths): Qwen-Image routers,
released or trained, apply as they are. The router reads the tokens the block sees, [txt; img] with
the reference tokens in img after the noisy image's, as the authors' released pipeline does (it
concatenates the edit latents to the image tokens before the blocks); width cuts the image stream's
MLP for all its tokens. "index" is 2509's reference method; "index_timestep_zero" (2511, ComfyUI 0.8+)
runs the reference tokens at timestep zero, doubling the conditioning's batch.
"""
import inspect

import pytest
import torch

import tests.comfy  # noqa: F401  (bind our `tests` package before ComfyUI's)
from tests.comfy.records import REUSE_BAND, assert_batch_is_each_alone, block_refs, pack_env
from tests.comfy.width_ref import zero_mlp_beyond
from tests.router_probe import split_gate


METHODS = ["index", "index_timestep_zero"]


def _need(method):
    import comfy.ldm.qwen_image.model as qm
    if method == "index_timestep_zero" and "timestep_zero_index" not in inspect.signature(
            qm.QwenImageTransformerBlock.forward).parameters:
        pytest.skip("this ComfyUI's Qwen-Image has no index_timestep_zero reference method (Qwen-Image-Edit-2511)")


@pytest.fixture(scope="module")
def env(comfy):
    return pack_env(comfy)


def _edit(tiny, model, method, batch=2, seed=3):
    """run(model, rows) -> latent: an edit of `batch` samples, each with the same reference image."""
    import comfy.sample

    from tests.comfy import elastic as el
    lat = tiny.latent("qwen", batch)
    noise = comfy.sample.prepare_noise(lat, 7)
    pos, neg = tiny.conds("qwen", batch, seed=seed, ctx=tiny.context_dim(model))
    ref = torch.randn(1, 16, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    for c in (pos, neg):
        c[0][1].update(reference_latents=[ref], reference_latents_method=method)

    def run(m, rows=slice(0, batch), **kw):
        return comfy.sample.sample(m, noise[rows], kw.get("steps", 4), 3.5, "euler", "simple", el.conds_rows(pos, rows),
                                   el.conds_rows(neg, rows), lat[rows], seed=0, disable_pbar=True)
    return run


@pytest.mark.parametrize("method", METHODS)
def test_open_routers_and_skipped_blocks(env, method):
    """Open routers = the plain edit bit for bit (cache on or off); closed = those blocks as identity."""
    nodes, pack, tiny, el = env
    _need(method)
    model = tiny.build("qwen")
    run = _edit(tiny, model, method, batch=1)
    plain = run(model)
    assert not torch.allclose(plain, tiny.sample(model, "qwen"), atol=1e-4), "the reference should matter"
    for cache in (False, True):
        assert torch.equal(run(el.apply(nodes, model, el.make_routers(pack, model), cache=cache,
                                        cache_start_percent=0.0)), plain)
    refs = block_refs(pack, model)
    ckpt = el.make_routers(pack, model)
    for i in (0, 2):
        el.force(ckpt.routers[i], p=0.01)
    out = run(el.apply(nodes, model, ckpt, cache=False))
    assert torch.equal(out, run(el.identity_blocks(model, [(refs[i].hook, refs[i].index) for i in (0, 2)])))


@pytest.mark.parametrize("method", METHODS)
def test_width_cuts_the_image_stream_with_its_reference_tokens(env, method):
    nodes, pack, tiny, el = env
    _need(method)
    model = tiny.build("qwen")
    run = _edit(tiny, model, method, batch=1)
    ckpt = el.make_routers(pack, model)
    el.force(ckpt.routers[1], width_idx=0)
    out = run(el.apply(nodes, model, ckpt, cache=False))
    ref_model = tiny.build("qwen")
    mlp = ref_model.get_model_object("diffusion_model").transformer_blocks[1].img_mlp.net
    with torch.no_grad():
        zero_mlp_beyond(mlp[0].proj, mlp[2], mlp[2].weight.shape[1] // 4)
    assert torch.allclose(out, run(ref_model), atol=1e-5)
    assert not torch.allclose(out, run(model), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_batch_rows_equal_each_sample_alone(env, method):
    """Two edits in one batch whose routers disagree on a block (2511: with the conditioning's batch
    doubled for the reference tokens' timestep) sample as each alone."""
    nodes, pack, tiny, el = env
    _need(method)
    model = tiny.build("qwen")
    adapter, refs = pack.nodes.adapters.adapter_for(model.get_model_object("diffusion_model")), block_refs(pack, model)
    run = _edit(tiny, model, method)
    got = {}

    def probe(args, extra):
        if not got:
            got.update(tokens=[t.clone() for t in adapter.router_tokens(refs[1], args)], cond=adapter.cond(refs[1], args).clone())
        return extra["original_block"](args)
    run(el.patch_block(pack, model, refs[1], probe))
    ckpt = el.make_routers(pack, model)
    split_gate(ckpt.routers[1], got["tokens"], got["cond"], [r % 2 for r in range(4)])  # [uncond s0, s1; cond s0, s1]
    el.force(ckpt.routers[0], width_idx=1)
    el.force(ckpt.routers[2], p=REUSE_BAND)
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0)
    batch = assert_batch_is_each_alone(el.last_record, patched, run, 1, ("cond", "uncond"))
    assert not torch.allclose(batch, run(model), atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_one_call_equals_cond_and_uncond_in_separate_calls(env, method, monkeypatch):
    nodes, pack, tiny, el = env
    _need(method)
    model = tiny.build("qwen")
    run = _edit(tiny, model, method, batch=1)
    ckpt = el.make_routers(pack, model)
    for r in ckpt.routers:
        el.force(r, p=REUSE_BAND)
    el.force(ckpt.routers[1], width_idx=0)
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0)
    rows = []
    counter = el.patch_block(pack, model, block_refs(pack, model)[0],
                             lambda args, extra: rows.append(args["img"].shape[0]) or extra["original_block"](args))
    run(counter)
    together = run(patched)
    counts = el.last_record(patched).counts()
    monkeypatch.setattr(model.model, "memory_required", lambda *a, **k: 1e30)  # no two chunks fit one call
    run(counter)
    assert set(rows[:4]) == {2} and set(rows[4:]) == {1}, rows  # one call of 2 rows per step, then 2 of 1
    apart = run(patched)
    assert el.last_record(patched).counts() == counts and counts["reuse"] > 0
    assert torch.allclose(together, apart, atol=1e-5), (together - apart).abs().max()
