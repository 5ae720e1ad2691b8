"""Wan 2.1 / 2.2 (ComfyUI's `WanModel`) under Elastic DiT, on tiny random-weight text-to-video models
built from ComfyUI's own supported-model classes (WAN21_T2V; WAN22_T2V with the 48-channel latent of
the 2.2 TI2V 5B), a video latent [B, C, T, H, W], sampled through comfy.sample. Wan 2.2 A14B is two
such models (high-noise, low-noise expert), each with its own Apply node and router file.

Also here for Wan: batches, cond / uncond calls and conds of one type in test_batch_identity.py, Train
Elastic Router on the video latent in test_train_node.py and (LoRA) test_train_lora.py.
"""
import pytest
import torch

import tests.comfy  # noqa: F401  (bind our `tests` package before ComfyUI's)
from tests.comfy import contract
from tests.comfy.records import block_refs, pack_env
from tests.comfy.width_ref import zero_mlp_beyond


@pytest.fixture(scope="module")
def env(comfy):
    return pack_env(comfy)


def _sample(tiny, kind="wan"):
    return lambda m, **kw: tiny.sample(m, kind, **kw)


def test_family_blocks_and_compute_estimate(env):
    """Per token: self-attention's projections, the cross-attention's query and output projections,
    the MLP's two matrices, and attention scores over all video tokens."""
    nodes, pack, tiny, el = env
    model = tiny.build("wan")
    dm = model.get_model_object("diffusion_model")
    assert pack.nodes.adapters.adapter_for(dm).family == "wan"
    refs = block_refs(pack, model)
    assert [(r.hook, r.path) for r in refs] == [("double_block", f"blocks.{i}") for i in range(3)]
    blk, spec, n = dm.blocks[0], refs[0].spec, 32
    self_attn, cross = contract.linear_macs(blk.self_attn), blk.cross_attn
    q_o = cross.q.weight.numel() + cross.o.weight.numel()
    assert spec.attn_flops({"img": n}) == 2 * n * (self_attn + q_o) + 4 * n ** 2 * 64
    assert spec.mlp_flops({"img": n}) == 2 * n * contract.linear_macs(blk.ffn)
    assert spec.mlp_flops({"img": n}, 0.25) == spec.mlp_flops({"img": n}) / 4


@pytest.mark.parametrize("kind", ["wan", "wan22_5b"])
def test_open_routers_and_closed_routers(env, kind):
    """Open routers = the plain model bit for bit; closed = those blocks as identity."""
    nodes, pack, tiny, el = env
    model = tiny.build(kind)
    plain = tiny.sample(model, kind)
    assert torch.equal(tiny.sample(el.apply(nodes, model, el.make_routers(pack, model), cache=False), kind), plain)
    refs = block_refs(pack, model)
    ckpt = el.make_routers(pack, model)
    for i in (0, 2):
        el.force(ckpt.routers[i], p=0.01)
    out = tiny.sample(el.apply(nodes, model, ckpt, cache=False), kind)
    assert torch.equal(out, tiny.sample(el.identity_blocks(model, [(refs[i].hook, refs[i].index) for i in (0, 2)]), kind))
    assert not torch.allclose(out, plain, atol=1e-5)


def test_ti2v_per_frame_timesteps(env):
    """2.2 TI2V: a first frame kept (noise mask 0) runs at timestep zero, each token with its own
    modulation; open routers = the plain model, closed = identity blocks."""
    import comfy.sample
    nodes, pack, tiny, el = env
    model = tiny.build("wan22_5b")
    lat = torch.randn(1, 48, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(1, 1, 2, 8, 8)
    mask[:, :, 0] = 0
    pos, neg = tiny.conds("wan22_5b", ctx=tiny.context_dim(model))

    def run(m):
        return comfy.sample.sample(m, comfy.sample.prepare_noise(lat, 0), 4, 3.5, "euler", "simple", pos, neg, lat,
                                   noise_mask=mask, seed=0, disable_pbar=True)
    plain = run(model)
    assert torch.equal(run(el.apply(nodes, model, el.make_routers(pack, model), cache=False)), plain)
    ckpt = el.make_routers(pack, model)
    el.force(ckpt.routers[1], p=0.01)
    assert torch.equal(run(el.apply(nodes, model, ckpt, cache=False)), run(el.identity_blocks(model, [("double_block", 1)])))


@pytest.mark.parametrize("block,width_idx", [(0, 0), (2, 1)])
def test_width_equals_zeroed_hidden_channels(env, block, width_idx):
    nodes, pack, tiny, el = env
    model = tiny.build("wan")
    ckpt = el.make_routers(pack, model)
    el.force(ckpt.routers[block], width_idx=width_idx)
    out = tiny.sample(el.apply(nodes, model, ckpt, cache=False), "wan")
    ref_model = tiny.build("wan")
    ffn = ref_model.get_model_object("diffusion_model").blocks[block].ffn
    with torch.no_grad():
        zero_mlp_beyond(ffn[0], ffn[2], 128 * (width_idx + 1) // 4)
    ref = tiny.sample(ref_model, "wan")
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    assert not torch.allclose(out, tiny.sample(model, "wan"), atol=1e-5)


def test_cache_reuses_at_most_k_times(env):
    contract.cache_reuses_at_most_k_times(env, env[2].build("wan"), _sample(env[2]))


def test_input_model_is_never_changed(env):
    contract.input_model_is_never_changed(env, env[2].build("wan"), _sample(env[2]))


def test_routers_of_another_family_and_variants_are_refused_at_apply(env):
    """Routers of Flux or Qwen-Image, or of a Wan of another depth (A14B's two experts share a depth:
    each expert's own file is told apart by its name only); a VACE model is refused naming its class."""
    nodes, pack, tiny, el = env
    wan, flux = tiny.build("wan"), tiny.build("flux")
    cases = [(wan, flux, "made for the 'flux' family"), (flux, wan, "made for the 'wan' family"),
             (wan, tiny.build("qwen"), "made for the 'qwen_image' family"),
             (wan, tiny.build("wan", layers=4), "has 4 routers, but this wan model has 3 blocks")]
    for model, other, msg in cases:
        with pytest.raises(ValueError, match=msg):
            el.apply(nodes, model, el.make_routers(pack, other))
    vace = tiny.build_supported("WAN21_Vace", {**tiny.wan_config(), "model_type": "vace", "vace_layers": 1,
                                               "vace_in_dim": 96})
    with pytest.raises(ValueError, match="does not support this model.*VaceWanModel.*VACE.*supported families"):
        el.apply(nodes, vace, el.make_routers(pack, wan))
