"""GGUF models (city96's ComfyUI-GGUF): Apply on a Q8_0 / Q4_0 model gives what the same plan gives on
the dequantized weights (skip, width, cache, routers + LoRA, the released routers with their MLP
activation), and the user's GGUF model is unchanged. The tiny models go through a loader that repeats
UnetLoaderGGUF's steps (ComfyUI cannot detect a tiny width); one real-width test shows that loader gives
exactly what UnetLoaderGGUF itself gives, dense and under Apply.

Width slicing reads the weight each layer's own `cast_bias_weight` returns (ComfyUI-GGUF dequantizes the
whole weight and applies its LoRA patches there), so nothing here may slice the raw quantized bytes.
Skips, saying why, where ComfyUI-GGUF or the `gguf` package is absent.
"""
import os

import pytest
import torch

from tests.comfy import gguf_models as gm

CASES = [(kind, q) for kind in ("qwen", "flux") for q in gm.QTYPES] + [("qwen", "Q4_K"), ("flux", "Q4_K"), ("qwen", "Q6_K")]
# K-quants come in 256-value blocks: their tiny models are 256 wide (2 heads of 128), so most matrices are K-quants
WIDE = {"qwen": dict(attention_head_dim=128, axes_dims_rope=(16, 56, 56)), "flux": dict(hidden_size=256, axes_dim=[16, 56, 56])}
LORA_KEYS = {"qwen": ["transformer_blocks.0.img_mlp.net.0.proj.weight", "transformer_blocks.2.txt_mlp.net.2.weight",
                      "transformer_blocks.1.attn.to_q.weight"],
             "flux": ["double_blocks.0.img_mlp.0.weight", "single_blocks.0.linear1.weight",
                      "single_blocks.1.linear2.weight"]}


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    try:
        import gguf  # noqa: F401
    except ImportError:
        pytest.skip("the `gguf` package is not installed (pip install gguf; .ci/comfy-tests installs it)")
    path, how = gm.find_gguf_pack()
    if path is None:
        pytest.skip(how)
    try:
        mod = gm.load_gguf_pack(comfy[0], path)
    except Exception as e:
        pytest.skip(f"ComfyUI-GGUF at {path} does not load on this ComfyUI: {e!r}")
    return comfy, mod, str(tmp_path_factory.mktemp("gguf"))


def _models(env, kind, qtype):
    """(the user's GGUF model, a plain model holding its dequantized weights, the GGUF file)."""
    from devtools import tiny_models as tm
    (nodes, _), mod, folder = env
    cfg = tm.qwen_config(layers=4) if kind == "qwen" else tm.flux_config()
    if qtype in gm.K_QUANTS:
        cfg = {**cfg, **WIDE[kind]}
    base = tm.build_from_config(kind, cfg, seed=1)
    path = gm.write_gguf(os.path.join(folder, f"tiny-{kind}-{qtype}.gguf"),
                         base.get_model_object("diffusion_model").state_dict(), kind, qtype)
    plain = tm.build_from_config(kind, cfg, seed=1)
    plain.get_model_object("diffusion_model").load_state_dict(gm.dequantized_state(mod, path))
    return gm.load_gguf_model(nodes, mod, path, kind, cfg), plain


def _routers(pack, model, released: bool, folder: str):
    """Routers with a mixed plan: block 0 at 1/4 width, block 1 skipped, block 2 borderline (reused),
    the rest at 1/2 width. released: the authors' layout (Qwen-Image), read back from a file."""
    from tests.comfy import elastic as el
    ckpt = el.make_routers(pack, model, seed=2)
    if released:
        from devtools import authors_ref as ar
        state = {f"gate_mlps.{k[len('routers.'):]}": v for k, v in ckpt.routers.state_dict().items()}
        ckpt = pack.elastic_core.checkpoint.load_routers(ar.write_released(os.path.join(folder, "e-dit.safetensors"),
                                                                           {}, state))
    for i, r in enumerate(ckpt.routers):
        el.force(r, p={1: 0.01, 2: 0.505}.get(i, 0.99), width_idx={0: 0}.get(i, 1))
    return ckpt


def _lora(plain, kind) -> dict:
    """A user's LoRA (ComfyUI's lora_up / lora_down format) on attention and MLP weights."""
    g = torch.Generator().manual_seed(7)
    dm, sd = plain.get_model_object("diffusion_model"), {}
    for k in LORA_KEYS[kind]:
        out_f, in_f = dm.get_parameter(k).shape
        stem = "diffusion_model." + k[: -len(".weight")]
        sd[stem + ".lora_up.weight"] = torch.randn(out_f, 4, generator=g) * 0.1
        sd[stem + ".lora_down.weight"] = torch.randn(4, in_f, generator=g) * 0.1
    return sd


@pytest.mark.parametrize("kind,qtype", CASES)
@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
def test_gguf_equals_dequantized(env, kind, qtype, lora):
    from tests.comfy import elastic as el
    from tests.comfy import tiny
    (nodes, pack), _, folder = env
    user, plain = _models(env, kind, qtype)
    import gguf
    held = [p.tensor_type for p in user.get_model_object("diffusion_model").parameters() if hasattr(p, "tensor_type")]
    assert held.count(getattr(gguf.GGMLQuantizationType, qtype)) >= 8, held  # the MLPs and attention are qtype
    before = tiny.sample(user, kind, steps=3)
    released = kind == "qwen" and lora  # the authors' routers + a LoRA: their activation runs on GGUF weights too
    ckpt = _routers(pack, plain, released, folder)
    import comfy.sd
    outs, recs = [], []
    for m in (user, plain):  # the LoRA goes on as LoraLoaderModelOnly puts it on
        base = comfy.sd.load_lora_for_models(m, None, _lora(plain, kind), 1.0, 0)[0] if lora else m
        patched = el.apply(nodes, base, ckpt, cache_start_percent=0.0)
        outs.append(tiny.sample(patched, kind, steps=3))
        recs.append(el.last_record(patched))
    assert recs[0].events == recs[1].events
    ec = pack.elastic_core
    assert {ec.stats.SKIP, ec.stats.REUSE, ec.stats.RUN} <= set(recs[0].events["action"])
    assert {0.25, 0.5} <= set(recs[0].events["width"])
    assert torch.allclose(outs[0], outs[1], atol=1e-5, rtol=1e-5), float((outs[0] - outs[1]).abs().max())
    assert not torch.equal(outs[0], before)
    assert torch.equal(tiny.sample(user, kind, steps=3), before), "the user's GGUF model changed"
    if released:
        assert ckpt.meta.mlp_activation == "quick_gelu"


REAL_QWEN = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=1,
                 attention_head_dim=128, num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56))


def test_unet_loader_gguf_itself_equals_the_tiny_models_loader(env):
    """UnetLoaderGGUF, as a user runs it, on a one-block Qwen-Image at the real width (ComfyUI's model
    detection reads only the depth, so only the real width is detected; 0.36 B parameters, Q4_0): the
    model it returns gives, dense and under Apply (the one block at 1/4 width, sliced from the GGUF
    weight), exactly what the loader the tiny tests use (`gguf_models.load_gguf_model`) gives, and stays
    unchanged. That makes the tiny tests' loader a faithful stand-in for UnetLoaderGGUF."""
    import folder_paths
    from devtools import tiny_models as tm
    from tests.comfy import elastic as el
    from tests.comfy import tiny
    (nodes, pack), mod, folder = env
    unet_dir = os.path.join(folder, "unet")
    os.makedirs(unet_dir, exist_ok=True)
    base = tm.build_from_config("qwen", REAL_QWEN, seed=1, std=0.02)
    path = gm.write_gguf(os.path.join(unet_dir, "real-width-qwen-Q4_0.gguf"),
                         base.get_model_object("diffusion_model").state_dict(), "qwen", "Q4_0")
    del base
    folder_paths.add_model_folder_path("unet", unet_dir)
    user = nodes.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]().load_unet(os.path.basename(path))[0]
    assert type(user.model).__name__ == "QwenImage" and len(user.get_model_object("diffusion_model").transformer_blocks) == 1
    replica = gm.load_gguf_model(nodes, mod, path, "qwen", REAL_QWEN)
    kw = dict(steps=2, size=8, tokens=4)
    before = tiny.sample(user, "qwen", **kw)
    assert torch.equal(tiny.sample(replica, "qwen", **kw), before)
    ckpt = el.make_routers(pack, user, seed=2, layout="compact")
    el.force(ckpt.routers[0], p=0.99, width_idx=0)
    outs, recs = [], []
    for m in (user, replica):
        patched = el.apply(nodes, m, ckpt, cache_start_percent=0.0)
        outs.append(tiny.sample(patched, "qwen", **kw))
        recs.append(el.last_record(patched))
    assert recs[0].events == recs[1].events and set(recs[0].events["width"]) == {0.25}
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], before)
    assert torch.equal(tiny.sample(user, "qwen", **kw), before), "the user's GGUF model changed"
