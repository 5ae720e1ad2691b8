"""Z-Image (ComfyUI's `ZImage`: Lumina 2's NextDiT with Z-Image's modulation, v0.8+) under Elastic
DiT, on tiny random-weight models built from ComfyUI's own supported-model class, sampled through
comfy.sample. Its layers have no patches_replace["dit"] hook: the pack object-patches each routed
layer with a view of itself that calls one (nodes/layer_hook.py). The references here do not use
that view: an identity layer is ComfyUI's own add_object_patch of a pass-through module, a narrow
layer is the plain model with feed-forward channels zeroed. Skipped, with the reason, on a ComfyUI
without the class (0.3.64).

Also here for Z-Image: batches and cond / uncond calls in test_batch_identity.py, Train Elastic Router
in test_train_node.py and (LoRA) test_train_lora.py, the workflow in test_workflows.py.
"""
import pytest
import torch

import tests.comfy  # noqa: F401  (bind our `tests` package before ComfyUI's)
from tests.comfy import contract
from tests.comfy.records import block_refs, pack_env
from tests.comfy.width_ref import zero_mlp_beyond

KIND = "zimage"


@pytest.fixture(scope="module")
def env(comfy):
    nodes, pack, tiny, el = pack_env(comfy)
    el.need(KIND)
    return nodes, pack, tiny, el


def _sample(tiny):
    return lambda m, **kw: tiny.sample(m, KIND, **kw)


class _PassThrough(torch.nn.Module):
    """A layer that returns its tokens: what a skipped layer must be."""

    def forward(self, x, *args, **kwargs):
        return x


def test_family_blocks_and_compute_estimate(env):
    """The 3 main layers are routed (the refiners are not); the estimate counts per token 2 x the
    feed-forward's three matrices and the attention's projections, and attention over all tokens."""
    nodes, pack, tiny, el = env
    model = tiny.build(KIND)
    dm = model.get_model_object("diffusion_model")
    assert pack.nodes.adapters.adapter_for(dm).family == "z_image"
    refs = block_refs(pack, model)
    assert [(r.hook, r.path) for r in refs] == [("layer", f"layers.{i}") for i in range(3)]
    for ref in refs:
        blk, spec, tokens = dm.get_submodule(ref.path), ref.spec, {"x": 96}
        ffn = contract.linear_macs(blk.feed_forward)
        assert spec.gated and (spec.dim, spec.mlp_hidden) == (256, 688) and ffn == 3 * 256 * 688
        assert spec.mlp_flops(tokens) == 2 * 96 * ffn and spec.mlp_flops(tokens, 0.25) == 2 * 96 * 3 * 256 * 172
        assert spec.attn_flops(tokens) == 2 * 96 * contract.linear_macs(blk.attention) + 4 * 96 ** 2 * 256
    cfg = pack.nodes.adapters.adapter_for(dm).router_config(dm)
    assert (cfg.dim, cfg.cond_dim) == (256, 256)  # adaLN reads the 256-wide timestep embedding


def test_open_routers_equal_the_plain_model_bit_for_bit(env):
    nodes, pack, tiny, el = env
    model = tiny.build(KIND)
    ref = tiny.sample(model, KIND)
    for cache in (False, True):
        patched = el.apply(nodes, model, el.make_routers(pack, model), cache=cache, cache_start_percent=0.0)
        assert torch.equal(tiny.sample(patched, KIND), ref)
        rec = el.last_record(patched)
        assert rec.counts()["run"] == len(rec) == 4 * 3 * 2  # steps x layers x (cond, uncond)


def test_closed_routers_equal_identity_layers(env):
    nodes, pack, tiny, el = env
    model = tiny.build(KIND)
    ckpt = el.make_routers(pack, model)
    for i in (0, 2):
        el.force(ckpt.routers[i], p=0.01)
    out = tiny.sample(el.apply(nodes, model, ckpt, cache=False), KIND)
    ident = model.clone()
    for i in (0, 2):
        ident.add_object_patch(f"diffusion_model.layers.{i}", _PassThrough())
    assert torch.equal(out, tiny.sample(ident, KIND))
    assert not torch.allclose(out, tiny.sample(model, KIND), atol=1e-5)


@pytest.mark.parametrize("block,width_idx", [(1, 0), (2, 2)])
def test_width_equals_zeroed_hidden_channels_of_w1_w3_and_w2(env, block, width_idx):
    nodes, pack, tiny, el = env
    model = tiny.build(KIND)
    ckpt = el.make_routers(pack, model)
    el.force(ckpt.routers[block], width_idx=width_idx)
    out = tiny.sample(el.apply(nodes, model, ckpt, cache=False), KIND)
    ref_model = tiny.build(KIND)
    ff = ref_model.get_model_object("diffusion_model").layers[block].feed_forward
    k = 688 * (width_idx + 1) // 4
    with torch.no_grad():
        zero_mlp_beyond(ff.w1, ff.w2, k, fc_up=ff.w3)
    ref = tiny.sample(ref_model, KIND)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    assert not torch.allclose(out, tiny.sample(model, KIND), atol=1e-5)


def test_cache_reuses_at_most_k_times(env):
    contract.cache_reuses_at_most_k_times(env, env[2].build(KIND), _sample(env[2]))


def test_input_model_is_never_changed(env):
    contract.input_model_is_never_changed(env, env[2].build(KIND), _sample(env[2]))


def test_routers_of_another_family_are_refused_at_apply(env):
    nodes, pack, tiny, el = env
    z, flux = tiny.build(KIND), tiny.build("flux")
    cases = [(z, flux, "made for the 'flux' family"), (flux, z, "made for the 'z_image' family"),
             (z, tiny.build(KIND, layers=4), "has 4 routers, but this z_image model has 3 blocks")]
    for model, other, msg in cases:
        with pytest.raises(ValueError, match=msg):
            el.apply(nodes, model, el.make_routers(pack, other))


def test_lumina2_is_refused_at_apply_and_train(env):
    """Lumina 2.0 shares the class with another modulation: refused with the documented message."""
    nodes, pack, tiny, el = env
    lumina = tiny.build_supported("Lumina2", tiny.zimage_config(z_image=False))
    with pytest.raises(ValueError, match="does not support this model.*Lumina 2.0.*supported families"):
        el.apply(nodes, lumina, el.make_routers(pack, tiny.build(KIND)))
    train = nodes.NODE_CLASS_MAPPINGS["ElasticDiTTrainRouter"]()
    pos, _ = tiny.conds(KIND)
    with pytest.raises(ValueError, match="does not support this model.*Lumina 2.0"):
        train.train(lumina, pos, {"samples": tiny.latent(KIND)}, 1, 1e-3, 0.5, 0.6, "lumina-test", 0)
