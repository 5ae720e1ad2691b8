"""The patched model against the plain one, on tiny real Flux / Qwen-Image / Chroma / Flux.2 models
(Flux.2 only where ComfyUI has the class)."""
import pytest
import torch

from tests.comfy.width_ref import zero_fused_single_block_beyond, zero_mlp_beyond

KINDS = ["flux", "qwen", "chroma", "flux2", "flux2_klein"]


@pytest.fixture(scope="module")
def env(comfy):
    from tests.comfy import elastic, tiny
    return comfy[0], comfy[1], tiny, elastic


@pytest.mark.parametrize("kind", KINDS)
def test_open_full_width_no_cache_identical(env, kind):
    nodes, pack, tiny, el = env
    el.need(kind)
    model = tiny.build(kind)
    ref = tiny.sample(model, kind)
    patched = el.apply(nodes, model, el.make_routers(pack, model), cache=False)
    out = tiny.sample(patched, kind)
    assert torch.equal(out, ref)
    rec = el.last_record(patched)
    assert rec.counts()["run"] == len(rec) > 0 and rec.counts()["skip"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_skipped_blocks_equal_identity_blocks(env, kind):
    nodes, pack, tiny, el = env
    el.need(kind)
    model = tiny.build(kind)
    ckpt = el.make_routers(pack, model)
    refs = pack.nodes.adapters.adapter_for(model.get_model_object("diffusion_model")).blocks(
        model.get_model_object("diffusion_model"))
    chosen = [0, len(refs) - 1] if kind == "qwen" else [1, 2]
    for i in chosen:
        el.force(ckpt.routers[i], p=0.01)
    out = tiny.sample(el.apply(nodes, model, ckpt, cache=False), kind)
    ref = tiny.sample(el.identity_blocks(model, [(refs[i].hook, refs[i].index) for i in chosen]), kind)
    assert torch.equal(out, ref)
    assert not torch.allclose(out, tiny.sample(model, kind))


def _zero_beyond(dm, path: str, k: int, kind: str, fused: bool):
    blk = dm.get_submodule(path)
    with torch.no_grad():
        if fused:  # Flux single: linear1 rows [3D + k:] (gated: of both halves), linear2 cols [D + k:]
            zero_fused_single_block_beyond(blk, k)
            return
        mlps = [blk.img_mlp.net] if kind == "qwen" else [blk.img_mlp, blk.txt_mlp]
        for mlp in mlps:  # Flux.2: Linear(D, 2M) = [gate; up], both halves cut
            zero_mlp_beyond(mlp[0].proj if kind == "qwen" else mlp[0], mlp[2], k)


@pytest.mark.parametrize("kind,block", [("flux", 0), ("flux", 3), ("qwen", 1), ("chroma", 2), ("flux2", 0),
                                        ("flux2", 3), ("flux2_klein", 2)])
def test_quarter_width_equals_zeroed_hidden_channels(env, kind, block):
    nodes, pack, tiny, el = env
    el.need(kind)
    model = tiny.build(kind)
    ckpt = el.make_routers(pack, model)
    el.force(ckpt.routers[block], width_idx=0)
    out = tiny.sample(el.apply(nodes, model, ckpt, cache=False), kind)
    ref_model = tiny.build(kind)
    dm = ref_model.get_model_object("diffusion_model")
    ref_block = pack.nodes.adapters.adapter_for(dm).blocks(dm)[block]
    hidden = ref_block.spec.mlp_hidden
    _zero_beyond(dm, ref_block.path, hidden // 4, kind, ref_block.hook == "single_block")
    ref = tiny.sample(ref_model, kind)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    assert not torch.allclose(out, tiny.sample(model, kind), atol=1e-5)
