"""A sample's result must not depend on what it shares a model call with.

ComfyUI batches cond and uncond rows, the samples of a batch and several conds of one type into one
model call, or runs them in separate calls (under memory pressure, or when conds cannot be
concatenated). Elastic DiT decides per row, so every arrangement must give the same image, also when
the rows of one call decide differently (different widths: separate row groups) and then reuse what
they cached, and when two conds of one type run in separate calls (each keeps its own cache).
"""
import pytest
import torch

import tests.comfy  # noqa: F401  (binds this repo's `tests` package before ComfyUI's)
from tests.router_probe import split_width

FAMILIES = ["flux", "chroma", "qwen", "flux2", "zimage", "wan"]  # Flux.2, Z-Image where ComfyUI has the class
BAND = 0.505  # in [tau, tau + delta] = [0.5, 0.515]: run once, then reuse


@pytest.fixture(scope="module")
def env(comfy):
    from tests.comfy import elastic, tiny
    nodes, pack = comfy
    return nodes, pack, tiny, elastic


def _refs(pack, model):
    dm = model.get_model_object("diffusion_model")
    return pack.nodes.adapters.adapter_for(dm), pack.nodes.adapters.adapter_for(dm).blocks(dm)


def _router_inputs(pack, model, block, run):
    """(router tokens, router conditioning) block `block` sees at its first call in run(m)."""
    from tests.comfy import elastic as el
    adapter, refs = _refs(pack, model)
    ref, got = refs[block], {}

    def patch(args, extra):
        if not got:
            got["tokens"] = [t.clone() for t in adapter.router_tokens(ref, args)]
            got["cond"] = adapter.cond(ref, args).clone()
        return extra["original_block"](args)
    run(el.patch_block(pack, model, ref, patch))
    return got["tokens"], got["cond"]


def _split_ckpt(el, pack, model, block, run, labels):
    """Routers: every block in the reuse band; `block` runs rows labelled 0 at width 1/4, 1 at full."""
    ckpt = el.make_routers(pack, model)
    for r in ckpt.routers:
        el.force(r, p=BAND)
    tokens, cond = _router_inputs(pack, model, block, run)
    split_width(ckpt.routers[block], tokens, cond, labels)
    return ckpt


def _sampler(kind, tiny, model, batch=1, steps=4, cfg=3.5, positive=None):
    import comfy.sample

    from tests.comfy import elastic as el
    lat = tiny.latent(kind, batch)
    noise = comfy.sample.prepare_noise(lat, 7)
    ctx = tiny.context_dim(model)
    pos, neg = tiny.conds(kind, batch, seed=3, ctx=ctx)
    pos = pos if positive is None else positive(pos)

    def run(m, rows=slice(0, batch)):
        return comfy.sample.sample(m, noise[rows], steps, cfg, "euler", "simple", el.conds_rows(pos, rows),
                                   el.conds_rows(neg, rows), lat[rows], seed=0, disable_pbar=True)
    return run


def _separate_calls(monkeypatch, model):
    """Memory pressure as ComfyUI sees it: no two cond chunks fit in one model call."""
    monkeypatch.setattr(model.model, "memory_required", lambda *a, **k: 1e30)


def _block_calls(pack, model, run):
    """How many rows each call of block 0 got, in order (to check how ComfyUI batched)."""
    from tests.comfy import elastic as el
    adapter, refs = _refs(pack, model)
    rows = []

    def patch(args, extra):
        rows.append(next(iter(adapter.streams(refs[0], args).values())).shape[0])
        return extra["original_block"](args)
    run(el.patch_block(pack, model, refs[0], patch))
    return rows


def _mixed_first_step(rec, block):
    widths = {rec.events["width"][j] for j in range(len(rec))
              if rec.events["step"][j] == 0 and rec.events["block"][j] == block}
    return len(widths) > 1


@pytest.mark.parametrize("kind", FAMILIES)
def test_batch_equals_each_sample_alone_when_rows_disagree(env, kind):
    nodes, pack, tiny, el = env
    el.need(kind)
    model = tiny.build(kind)
    run = _sampler(kind, tiny, model, batch=2)
    block = 1
    # rows of a call: [uncond s0, uncond s1, cond s0, cond s1]; sample 0 at width 1/4, sample 1 full
    ckpt = _split_ckpt(el, pack, model, block, run, [0, 1, 0, 1])
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0)
    both = run(patched)
    rec = el.last_record(patched)
    assert _mixed_first_step(rec, block) and rec.counts()["reuse"] > 0, "test setup: rows must disagree, then reuse"
    for r in range(2):
        alone = run(patched, slice(r, r + 1))
        diff = (both[r:r + 1] - alone).abs().max()
        assert torch.allclose(both[r:r + 1], alone, atol=1e-5), f"{kind}: sample {r} differs in a batch by {diff}"


@pytest.mark.parametrize("kind", FAMILIES)
def test_one_call_equals_cond_and_uncond_in_separate_calls(env, kind, monkeypatch):
    nodes, pack, tiny, el = env
    el.need(kind)
    model = tiny.build(kind)
    run = _sampler(kind, tiny, model)
    block = 1
    ckpt = _split_ckpt(el, pack, model, block, run, [0, 1])  # uncond at width 1/4, cond at full width
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0)
    assert set(_block_calls(pack, model, run)) == {2}, "cond and uncond should share one call"
    together = run(patched)
    rec = el.last_record(patched)
    assert _mixed_first_step(rec, block) and rec.counts()["reuse"] > 0, "test setup: rows must disagree, then reuse"
    _separate_calls(monkeypatch, model)
    assert set(_block_calls(pack, model, run)) == {1}, "memory pressure should split cond and uncond"
    apart = run(patched)
    assert el.last_record(patched).counts() == rec.counts()
    diff = (together - apart).abs().max()
    assert torch.allclose(together, apart, atol=1e-5), f"{kind}: one call vs separate calls differ by {diff}"


def _two_positives(pos):
    """ConditioningCombine of two prompts: two conds of type `cond` (a second prompt, same length)."""
    ctx, extra = pos[0]
    g = torch.Generator().manual_seed(11)
    return [[ctx, extra], [torch.randn(ctx.shape, generator=g), dict(extra)]]


@pytest.mark.parametrize("kind", FAMILIES)
def test_conds_of_one_type_in_separate_calls_keep_their_own_cache(env, kind, monkeypatch):
    nodes, pack, tiny, el = env
    el.need(kind)
    model = tiny.build(kind)
    run = _sampler(kind, tiny, model, positive=_two_positives)
    ckpt = el.make_routers(pack, model)
    for r in ckpt.routers:
        el.force(r, p=BAND)  # every block: run at step 0, then reuse its own residual
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0)
    assert set(_block_calls(pack, model, run)) == {3}, "two conds and an uncond should share one call"
    batched = run(patched)
    rec_b = el.last_record(patched)
    _separate_calls(monkeypatch, model)
    assert set(_block_calls(pack, model, run)) == {1}
    apart = run(patched)
    rec_a = el.last_record(patched)
    diff = (batched - apart).abs().max()
    assert torch.allclose(batched, apart, atol=1e-5), f"{kind}: conds in separate calls differ by {diff}"
    assert sorted(rec_a.streams) == sorted(rec_b.streams) == ["cond", "cond2", "uncond"]
    assert rec_a.counts() == rec_b.counts() and rec_a.counts()["reuse"] > 0
    plain_apart = run(model)
    monkeypatch.undo()
    plain_batched = run(model)
    assert torch.allclose(plain_apart, plain_batched, atol=1e-5)  # the plain model does not care either
