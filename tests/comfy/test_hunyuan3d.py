"""Hunyuan3D 2.0 (`Hunyuan3Dv2`) and 2.1 (`HunYuanDiTPlain`) under Elastic DiT: tiny random-weight
models built from ComfyUI's own supported-model classes, a 3D latent [B, 64, L] as
EmptyLatentHunyuan3Dv2 makes it, sampled through comfy.sample (cfg > 1 throughout: ComfyUI before
0.33 cannot run Hunyuan3D 2.1 at cfg 1).

Routers are forced (tests/comfy/elastic.py `force`): p = 0.505 lies in the reuse band [0.5, 0.515],
p = 0.01 is skipped, the default open routers (p = 0.7, full width) run every block.
"""
import pytest
import torch

import tests.comfy  # noqa: F401  (bind our `tests` package before ComfyUI's)
from tests.comfy.records import (REUSE, REUSE_BAND, RUN, assert_batch_is_each_alone, block_refs as _refs,
                                 event_rows as _rows, pack_env)
from tests.comfy.width_ref import zero_fused_single_block_beyond
from tests.router_probe import split_gate

KINDS = ["hunyuan3d", "hunyuan3d21"]
FAMILY = {"hunyuan3d": "hunyuan3d2", "hunyuan3d21": "hunyuan3d2_1"}


@pytest.fixture(scope="module")
def env(comfy):
    return pack_env(comfy)


def _identity(model, refs):
    """A clone whose blocks `refs` are identity, by ComfyUI's own hook (2.1's hook returns a tensor)."""
    m = model.clone()
    for ref in refs:
        def skip(args, extra, hook=ref.hook):
            if hook == "block":
                return args["x"]
            return {k: args[k] for k in (("img",) if hook == "single_block" else ("img", "txt"))}
        m.set_model_patch_replace(skip, "dit", ref.hook, ref.index)
    return m


def test_adapters_are_registered(env):
    nodes, pack, tiny, el = env
    fams = pack.nodes.adapters.supported_families()
    assert {"hunyuan3d2", "hunyuan3d2_1"} <= set(fams)
    for kind in KINDS:
        model = tiny.build_3d(kind)
        refs = _refs(pack, model)
        assert pack.nodes.adapters.adapter_for(model.get_model_object("diffusion_model")).family == FAMILY[kind]
        assert [r.hook for r in refs] == (["double_block"] * 2 + ["single_block"] * 2 if kind == "hunyuan3d"
                                          else ["block"] * 5)


# -- open routers, skipped blocks, width ---------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_open_routers_equal_the_plain_model_bit_for_bit(env, kind):
    nodes, pack, tiny, el = env
    model = tiny.build_3d(kind)
    ref = tiny.sample_3d(model)
    for cache in (False, True):
        patched = el.apply(nodes, model, el.make_routers(pack, model), cache=cache, cache_start_percent=0.0)
        assert torch.equal(tiny.sample_3d(patched), ref)
        rec = el.last_record(patched)
        assert rec.counts()["run"] == len(rec) == 4 * len(_refs(pack, model)) * 2  # steps x blocks x (cond, uncond)


@pytest.mark.parametrize("kind,chosen", [("hunyuan3d", [1, 2]), ("hunyuan3d21", [0, 3, 4])])
def test_skipped_blocks_equal_identity_blocks(env, kind, chosen):
    """2.1: block 3 takes a long skip, block 4 is an MoE block; skipped, each passes its input on."""
    nodes, pack, tiny, el = env
    model = tiny.build_3d(kind)
    refs = _refs(pack, model)
    ckpt = el.make_routers(pack, model)
    for i in chosen:
        el.force(ckpt.routers[i], p=0.01)
    out = tiny.sample_3d(el.apply(nodes, model, ckpt, cache=False))
    assert torch.equal(out, tiny.sample_3d(_identity(model, [refs[i] for i in chosen])))
    assert not torch.allclose(out, tiny.sample_3d(model), atol=1e-5)


def _zero_beyond(dm, ref, k: int) -> None:
    """Zero hidden channels k.. of the feed-forwards the block's width cut applies to."""
    blk = dm.get_submodule(ref.path)
    with torch.no_grad():
        if ref.hook == "single_block":
            zero_fused_single_block_beyond(blk, k)
            return
        if ref.hook == "double_block":
            pairs = [(mlp[0], mlp[2]) for mlp in (blk.img_mlp, blk.txt_mlp)]
        elif blk.use_moe:  # every routed expert and the shared one
            pairs = [(ff.net[0].proj, ff.net[2]) for ff in [*blk.moe.experts, blk.moe.shared_experts]]
        else:
            pairs = [(blk.mlp.fc1, blk.mlp.fc2)]
        for fc1, fc2 in pairs:
            fc1.weight[k:] = 0
            fc1.bias[k:] = 0
            fc2.weight[:, k:] = 0


@pytest.mark.parametrize("kind,block", [("hunyuan3d", 0), ("hunyuan3d", 3), ("hunyuan3d21", 1),
                                        ("hunyuan3d21", 4)])
def test_quarter_width_equals_zeroed_hidden_channels(env, kind, block):
    """2.0: a double block (both MLPs) and a single block (fused projections); 2.1: a plain block and
    an MoE block (every expert at a quarter of its channels, the gate untouched)."""
    nodes, pack, tiny, el = env
    model = tiny.build_3d(kind)
    ckpt = el.make_routers(pack, model)
    el.force(ckpt.routers[block], width_idx=0)
    out = tiny.sample_3d(el.apply(nodes, model, ckpt, cache=False))
    ref_model = tiny.build_3d(kind)
    dm = ref_model.get_model_object("diffusion_model")
    ref_block = _refs(pack, ref_model)[block]
    _zero_beyond(dm, ref_block, ref_block.spec.mlp_hidden // 4)
    ref = tiny.sample_3d(ref_model)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    assert not torch.allclose(out, tiny.sample_3d(model), atol=1e-5)


# -- the cache ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_cache_reuses_at_most_k_times(env, kind):
    nodes, pack, tiny, el = env
    steps = 7
    model = tiny.build_3d(kind)
    n = len(_refs(pack, model))
    ckpt = el.make_routers(pack, model)
    for r in ckpt.routers:
        el.force(r, p=REUSE_BAND)
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0, max_reuse=2)
    out = tiny.sample_3d(patched, steps=steps)
    rec = el.last_record(patched)
    acts = {}
    for e in _rows(rec):
        acts.setdefault((e["block"], e["stream"], e["sample"]), []).append(e["action"])
    assert len(acts) == n * 2
    for key, seq in acts.items():
        assert seq == [RUN, REUSE, REUSE, RUN, REUSE, REUSE, RUN], (key, seq)
    assert {e["reuse"] for e in _rows(rec) if e["action"] == REUSE} == {1, 2}
    off = el.apply(nodes, model, ckpt, cache=False, cache_start_percent=0.0, max_reuse=2)
    assert not torch.allclose(out, tiny.sample_3d(off, steps=steps), atol=1e-5)
    assert el.last_record(off).counts()["reuse"] == 0


# -- a batch of two ------------------------------------------------------------------------------

def _capture_router_inputs(model, adapter, ref, sample_fn):
    """(router tokens, conditioning) block `ref` sees at its first call in sample_fn(m)."""
    got = {}
    m = model.clone()

    def patch(args, extra):
        if not got:
            got.update(tokens=[t.clone() for t in adapter.router_tokens(ref, args)], cond=adapter.cond(ref, args).clone())
        return extra["original_block"](args)
    m.set_model_patch_replace(patch, "dit", ref.hook, ref.index)
    sample_fn(m)
    return got["tokens"], got["cond"]


def _batch_case(env, kind):
    import comfy.sample
    nodes, pack, tiny, el = env
    model = tiny.build_3d(kind)
    dm = model.get_model_object("diffusion_model")
    adapter, refs = pack.nodes.adapters.adapter_for(dm), _refs(pack, model)
    lat = tiny.latent_3d(2)
    noise = comfy.sample.prepare_noise(lat, 7)
    pos, neg = tiny.conds_3d(2, seed=3, ctx=tiny.context_dim_3d(model))

    def run(m, rows=slice(0, 2)):
        c = lambda cs: [[ctx[rows], extra] for ctx, extra in cs]  # noqa: E731
        return comfy.sample.sample(m, noise[rows], 4, 3.5, "euler", "simple", c(pos), c(neg), lat[rows], seed=0,
                                   disable_pbar=True)
    straddled, narrow, band = (1, 2, 3)
    tokens, cond = _capture_router_inputs(model, adapter, refs[straddled], run)
    ckpt = el.make_routers(pack, model)
    split_gate(ckpt.routers[straddled], tokens, cond, [r % 2 for r in range(4)])  # [chunk 0: s0, s1; chunk 1: s0, s1]
    el.force(ckpt.routers[narrow], width_idx=1)
    el.force(ckpt.routers[band], p=REUSE_BAND)
    return nodes, el, model, el.apply(nodes, model, ckpt, cache_start_percent=0.0), run, straddled


def _check_batch(case):
    nodes, el, model, patched, run, straddled = case
    batch = assert_batch_is_each_alone(el.last_record, patched, run, straddled, ("cond", "uncond"))
    assert not torch.allclose(batch, run(model), atol=1e-4), "the routers should change the result"


@pytest.mark.parametrize("kind", KINDS)
def test_batch_rows_equal_each_sample_alone(env, kind):
    _check_batch(_batch_case(env, kind))


# -- the user's MODEL; routers of another family ---------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_input_model_is_never_changed(env, kind):
    import comfy.model_management
    import comfy.patcher_extension
    nodes, pack, tiny, el = env
    model = tiny.build_3d(kind)
    dm = model.get_model_object("diffusion_model")
    types = {name: type(mod) for name, mod in dm.named_modules()}
    before = tiny.sample_3d(model)
    ckpt = el.make_routers(pack, model)
    el.force(ckpt.routers[0], p=REUSE_BAND)
    el.force(ckpt.routers[1], p=0.01)
    el.force(ckpt.routers[len(ckpt.routers) - 1], width_idx=0)  # 2.1: the MoE block, every expert twinned
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0)
    assert not torch.allclose(tiny.sample_3d(patched), before, atol=1e-4)
    assert torch.equal(tiny.sample_3d(model), before)

    comfy.model_management.load_models_gpu([patched])  # its twins go in
    assert any(type(m).__name__.startswith("Elastic") for m in dm.modules())
    comfy.model_management.load_models_gpu([model])  # loading the plain model unloads the clone
    assert {name: type(mod) for name, mod in dm.named_modules()} == types, "twins left in the model"
    assert torch.equal(tiny.sample_3d(model), before)
    comfy.model_management.unload_all_models()
    assert torch.equal(tiny.sample_3d(model), before)

    to = model.model_options.get("transformer_options", {})
    assert not to.get("patches_replace", {}).get("dit") and not model.object_patches
    for wt in (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, comfy.patcher_extension.WrappersMP.APPLY_MODEL):
        assert "elastic_dit" not in model.wrappers.get(wt, {})
    assert "elastic_dit" not in str(model.model_options)


def test_routers_of_another_family_are_refused_at_apply(env):
    nodes, pack, tiny, el = env
    h2, h21, flux = tiny.build_3d("hunyuan3d"), tiny.build_3d("hunyuan3d21"), tiny.build("flux")
    cases = [(h2, flux, "made for the 'flux' family"), (h21, flux, "made for the 'flux' family"),
             (h2, h21, "made for the 'hunyuan3d2_1' family"), (h21, h2, "made for the 'hunyuan3d2' family"),
             (flux, h2, "made for the 'hunyuan3d2' family"),
             (h21, tiny.build_3d("hunyuan3d21", depth=7), "has 7 routers")]
    for model, other, msg in cases:
        with pytest.raises(ValueError, match=msg):
            el.apply(nodes, model, el.make_routers(pack, other))


def test_paper_3d_setting_is_a_preset(env):
    nodes, pack, tiny, el = env
    model = tiny.build_3d("hunyuan3d21")
    patched = el.apply(nodes, model, el.make_routers(pack, model), preset="paper: Hunyuan3D-3.0")
    cfg = patched.model_options["transformer_options"]["elastic_dit"].policy.config
    assert (cfg.tau, cfg.delta, cfg.max_reuse) == (0.5, 0.15, 5)


# -- Train Elastic Router on the 3D latent ---------------------------------------------------------

def _empty_latent(resolution: int) -> dict:
    """ComfyUI's own EmptyLatentHunyuan3Dv2 (a v3 node from 0.8 on, a classic one in 0.3.x)."""
    import comfy_extras.nodes_hunyuan3d as h3d
    cls = h3d.EmptyLatentHunyuan3Dv2
    out = cls.execute(resolution, 1) if hasattr(cls, "execute") else cls().generate(resolution, 1)
    return out.result[0] if hasattr(out, "result") else out[0]


@pytest.mark.parametrize("kind", KINDS)
def test_train_router_on_the_3d_latent(env, kind, tmp_path_factory):
    import os

    import folder_paths
    nodes, pack, tiny, el = env
    routers_dir = tmp_path_factory.mktemp("elastic_routers")
    folder_paths.add_model_folder_path("elastic_routers", str(routers_dir), is_default=True)
    with torch.inference_mode():  # as ComfyUI's executor runs nodes and loads models
        model = tiny.build_3d(kind, seed=3, std=0.08)
        pos, neg = tiny.conds_3d(1, 0, 8, tiny.context_dim_3d(model))  # what sample_3d passes
        lat = _empty_latent(16)
        before = tiny.sample_3d(model, cfg=2.0, resolution=16)
    assert lat["samples"].shape == (1, 64, 16)
    node = nodes.NODE_CLASS_MAPPINGS["ElasticDiTTrainRouter"]()
    with torch.inference_mode():
        ckpt = node.train(model, pos, lat, steps=12, learning_rate=0.1, rho_g=0.3, rho_w=0.5, filename=f"tiny {kind}",
                          seed=0, negative=neg, cfg=2.0, sampling_steps=4, teacher_runs=1)[0]
    assert ckpt.meta.family == FAMILY[kind] and os.path.dirname(ckpt.path) == str(routers_dir)
    init = el.make_routers(pack, model, layout=ckpt.meta.router.layout).routers.state_dict()
    assert any(not torch.allclose(init[k], v) for k, v in ckpt.routers.state_dict().items())
    patched = el.apply(nodes, model, ckpt, delta=0.0, cache=False)
    with torch.inference_mode():
        out = tiny.sample_3d(patched, cfg=2.0, resolution=16)
        assert torch.equal(tiny.sample_3d(model, cfg=2.0, resolution=16), before), "training changed the user's model"
    tot = el.last_record(patched).totals()
    assert tot["executed_fraction"] < 0.9 and torch.isfinite(out).all(), tot
    for name, mod in model.get_model_object("diffusion_model").named_modules():
        assert not getattr(mod, "weight_function", []) and "Elastic" not in type(mod).__name__, name


# -- the example workflow (ComfyUI's own validation of it: tests/comfy/test_workflows.py) ----------

def test_workflow_runs_image_to_mesh_through_apply():
    """image -> image condition -> KSampler <- Apply Elastic DiT <- checkpoint; KSampler -> 3D VAE decode
    -> mesh -> SaveGLB; Stats reads the Apply output after that KSampler."""
    import json
    import os
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "workflows", "hunyuan3d-elastic.json"), encoding="utf-8") as f:
        wf = json.load(f)
    nodes = {n["id"]: n for n in wf["nodes"]}
    into = {(l[3], nodes[l[3]]["inputs"][l[4]]["name"]): nodes[l[1]]["type"] for l in wf["links"]}
    by_type = {n["type"]: n["id"] for n in wf["nodes"]}
    chain = [("CLIPVisionEncode", "image", "LoadImage"), ("CLIPVisionEncode", "clip_vision", "ImageOnlyCheckpointLoader"),
             ("Hunyuan3Dv2Conditioning", "clip_vision_output", "CLIPVisionEncode"),
             ("KSampler", "positive", "Hunyuan3Dv2Conditioning"), ("KSampler", "negative", "Hunyuan3Dv2Conditioning"),
             ("KSampler", "latent_image", "EmptyLatentHunyuan3Dv2"), ("KSampler", "model", "ElasticDiTApply"),
             ("ElasticDiTApply", "model", "ImageOnlyCheckpointLoader"), ("ElasticDiTApply", "router", "ElasticDiTRouterLoader"),
             ("VAEDecodeHunyuan3D", "samples", "KSampler"), ("VAEDecodeHunyuan3D", "vae", "ImageOnlyCheckpointLoader"),
             ("VoxelToMesh", "voxel", "VAEDecodeHunyuan3D"), ("SaveGLB", "mesh", "VoxelToMesh"),
             ("ElasticDiTStats", "model", "ElasticDiTApply"), ("ElasticDiTStats", "samples", "KSampler")]
    for dst, name, src in chain:
        assert into.get((by_type[dst], name)) == src, (dst, name, into.get((by_type[dst], name)))
    apply = nodes[by_type["ElasticDiTApply"]]
    assert apply["widgets_values"][8] == "sliders" and apply["widgets_values"][:3] == [0.5, 0.15, 5]
    assert nodes[by_type["KSampler"]]["widgets_values"][3] > 1.0, "Hunyuan3D 2.1 needs cfg > 1 before ComfyUI 0.33"
    assert any(n["type"] == "Note" for n in wf["nodes"])
