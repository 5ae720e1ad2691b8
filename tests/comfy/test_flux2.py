"""Flux.2 (ComfyUI's `Flux2`: Flux's class with global modulation and SiLU-gated MLPs, v0.8+) under
Elastic DiT, on tiny random-weight dev (guidance embedded) and Klein (no guidance) models built from
ComfyUI's own supported-model class, a 128-channel latent, sampled through comfy.sample. Skipped, with
the reason, on a ComfyUI without the class (0.3.64).

Also here for Flux.2: exactness (open routers, skipped blocks, width) in test_exactness.py, batches and
cond / uncond calls in test_batch_identity.py, Train Elastic Router in test_train_node.py and (LoRA)
test_train_lora.py, the workflow in test_workflows.py.
"""
import inspect

import pytest
import torch

import tests.comfy  # noqa: F401  (bind our `tests` package before ComfyUI's)
from tests.comfy import contract
from tests.comfy.records import block_refs, pack_env

KINDS = ["flux2", "flux2_klein"]


@pytest.fixture(scope="module")
def env(comfy):
    return pack_env(comfy)


def _sampler(tiny, kind, refs=None, method=None):
    """sample(model, **kw) for `kind`; with `refs`, both conds carry reference latents (an edit)."""
    def run(m, **kw):
        if refs is None:
            return tiny.sample(m, kind, **kw)
        import comfy.sample
        lat = tiny.latent(kind)
        pos, neg = tiny.conds(kind, ctx=tiny.context_dim(m))
        for c in (pos, neg):
            c[0][1].update(reference_latents=[refs], **({"reference_latents_method": method} if method else {}))
        noise = comfy.sample.prepare_noise(lat, 0)
        return comfy.sample.sample(m, noise, kw.pop("steps", 4), kw.pop("cfg", 3.5), "euler", "simple", pos, neg,
                                   lat, seed=0, disable_pbar=True, **kw)
    return run


@pytest.mark.parametrize("kind", KINDS)
def test_family_blocks_and_compute_estimate(env, kind):
    """Its own family; the estimate counts per token 2 x each MLP's weights (3 matrices: gate, up,
    down) at full width, the kept share of them at width 1/4, and attention over all the block's tokens."""
    nodes, pack, tiny, el = env
    el.need(kind)
    model = tiny.build(kind)
    dm = model.get_model_object("diffusion_model")
    assert pack.nodes.adapters.adapter_for(dm).family == "flux2" and "flux2" in pack.nodes.adapters.supported_families()
    refs = block_refs(pack, model)
    assert [r.hook for r in refs] == ["double_block"] * 2 + ["single_block"] * 2
    d, m = 64, 192
    for ref in refs:
        blk, spec = dm.get_submodule(ref.path), ref.spec
        assert spec.gated and (spec.dim, spec.mlp_hidden) == (d, m)
        if ref.hook == "double_block":
            tokens = {"img": 10, "txt": 6}
            mlp = contract.linear_macs(blk.img_mlp)
            assert mlp == 3 * d * m and contract.linear_macs(blk.txt_mlp) == mlp
            assert spec.mlp_flops(tokens) == 2 * 16 * mlp
            attn = contract.linear_macs(blk.img_attn)  # qkv + proj
            assert spec.attn_flops(tokens) == 2 * 16 * attn + 4 * 16 ** 2 * d
        else:
            tokens = {"img": 16}
            assert spec.attn_flops(tokens) + spec.mlp_flops(tokens) == 2 * 16 * contract.linear_macs(blk) + 4 * 16 ** 2 * d
        assert spec.mlp_flops(tokens, 0.25) == spec.mlp_flops(tokens) / 4


@pytest.mark.parametrize("kind", KINDS)
def test_cache_reuses_at_most_k_times(env, kind):
    env[3].need(kind)
    contract.cache_reuses_at_most_k_times(env, env[2].build(kind), _sampler(env[2], kind))


def test_input_model_is_never_changed(env):
    env[3].need("flux2")
    contract.input_model_is_never_changed(env, env[2].build("flux2"), _sampler(env[2], "flux2"))


def test_routers_of_another_family_are_refused_at_apply(env):
    nodes, pack, tiny, el = env
    el.need("flux2")
    flux2, flux = tiny.build("flux2"), tiny.build("flux")
    cases = [(flux2, flux, "made for the 'flux' family"), (flux, flux2, "made for the 'flux2' family"),
             (flux2, tiny.build("qwen"), "made for the 'qwen_image' family"),
             (flux2, tiny.build("flux2_klein", depth=3), "has 5 routers, but this flux2 model has 4 blocks")]
    for model, other, msg in cases:
        with pytest.raises(ValueError, match=msg):
            el.apply(nodes, model, el.make_routers(pack, other))


def test_variants_it_cannot_route_are_refused_at_apply_and_train(env):
    """Flux's class with separate gate / up / down MLPs (Ovis: yak_mlp), or global modulation with an
    ungated MLP: refused with the documented message before any sampling."""
    import dataclasses

    import comfy.ldm.flux.model
    nodes, pack, tiny, el = env
    el.need("flux2")
    if "yak_mlp" not in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        pytest.skip("this ComfyUI's Flux has no yak_mlp variant")
    ovis = tiny.build_from_config("flux", {**tiny.flux_config(), "yak_mlp": True, "txt_norm": True})
    gelu2 = tiny.build_from_config("flux", {**tiny.flux2_config(), "mlp_silu_act": False})
    ckpt = el.make_routers(pack, tiny.build("flux"))
    for model, what in ((ovis, "yak_mlp"), (gelu2, "Flux.2-type model with a gelu MLP")):
        with pytest.raises(ValueError, match=f"does not support this model.*{what}.*supported families"):
            el.apply(nodes, model, ckpt)
    train = nodes.NODE_CLASS_MAPPINGS["ElasticDiTTrainRouter"]()
    pos, _ = tiny.conds("flux")
    with pytest.raises(ValueError, match="does not support this model.*yak_mlp"):
        train.train(ovis, pos, {"samples": tiny.latent("flux")}, 1, 1e-3, 0.5, 0.6, "ovis-test", 0)


def _ref_methods():
    import comfy.ldm.flux.model
    zero = "timestep_zero_index" in inspect.signature(comfy.ldm.flux.model.Flux.forward_orig).parameters
    return ["index"] + (["index_timestep_zero"] if zero else [])


def test_edit_with_reference_latents(env):
    """An edit (reference latents in the image stream, ReferenceLatent's way; also at timestep zero
    where this ComfyUI has it): open routers = the plain model bit for bit, skipped blocks = identity
    blocks, a quarter width changes the result, all over [txt; img; reference] tokens."""
    nodes, pack, tiny, el = env
    el.need("flux2")
    reference = torch.randn(1, 128, 8, 8, generator=torch.Generator().manual_seed(5))
    for method in _ref_methods():
        # timestep zero is Klein's edit mode: ComfyUI's Flux doubles the timesteps there but not a
        # guidance embedding's batch, so dev (guidance embedded) cannot run it, with or without us
        kind = "flux2_klein" if method == "index_timestep_zero" else "flux2"
        model = tiny.build(kind)
        refs = block_refs(pack, model)
        run = _sampler(tiny, kind, reference, method)
        plain = run(model)
        assert not torch.allclose(plain, tiny.sample(model, kind), atol=1e-4), "the reference should matter"
        assert torch.equal(run(el.apply(nodes, model, el.make_routers(pack, model), cache=False)), plain), method
        ckpt = el.make_routers(pack, model)
        for i in (1, 2):
            el.force(ckpt.routers[i], p=0.01)
        out = run(el.apply(nodes, model, ckpt, cache=False))
        assert torch.equal(out, run(el.identity_blocks(model, [(refs[i].hook, refs[i].index) for i in (1, 2)]))), method
        narrow = el.make_routers(pack, model)
        el.force(narrow.routers[3], width_idx=0)
        assert not torch.allclose(run(el.apply(nodes, model, narrow, cache=False)), plain, atol=1e-5)
