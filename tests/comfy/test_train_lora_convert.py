"""`elastic-dit convert RELEASED --base BASE --lora-rank R` on a tiny real ComfyUI Qwen-Image: the
LoRA it writes loads with the core LoraLoaderModelOnly (every tensor mapped, biases included) and
turns the user's base model into the released one, in float32 storage and in fp8 storage (ComfyUI
applies the LoRA through its own cast path); the router file loads in Load Elastic Router."""
import importlib
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import tests.comfy  # noqa: F401

DELTA_RANK = 2


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    import folder_paths

    from tests.comfy import elastic, tiny
    d = tmp_path_factory.mktemp("convert")
    for folder in ("loras", "elastic_routers"):
        (d / folder).mkdir()
        folder_paths.add_model_folder_path(folder, str(d / folder), is_default=True)
    return comfy[0], comfy[1], tiny, elastic, d


def _state(model):
    return {k: v.detach().float().clone() for k, v in model.get_model_object("diffusion_model").state_dict().items()}


def _release(pack, tiny, folder):
    """base.safetensors: a tiny Qwen-Image's weights; released.safetensors: those + a rank-2 change of every
    matrix, changed biases and norms, + routers under gate_mlps (the authors' layout)."""
    base_model = tiny.build("qwen", seed=4, std=0.08)
    base = _state(base_model)
    g = torch.Generator().manual_seed(9)
    released = {}
    for k, w in base.items():
        if w.dim() == 2:
            d = torch.randn(w.shape[0], DELTA_RANK, generator=g) @ torch.randn(DELTA_RANK, w.shape[1], generator=g)
            released[k] = w + 0.02 * d
        else:
            released[k] = w + 0.01 * torch.randn(w.shape, generator=g)
    routers = tiny.make_routers(pack, base_model).routers.state_dict()
    released.update({f"gate_mlps.{k[len('routers.'):]}": v for k, v in routers.items()})
    save_file(base, str(folder / "base.safetensors"))
    save_file(released, str(folder / "released.safetensors"))
    return base_model, {k: v for k, v in released.items() if not k.startswith("gate_mlps.")}


def _with_weights(tiny, state, **kw):
    m = tiny.build("qwen", seed=4, std=0.08, **kw)
    with torch.no_grad():
        for k, p in m.get_model_object("diffusion_model").state_dict().items():
            p.copy_(state[k].to(p.dtype))
    return m


def test_released_as_routers_and_lora_on_the_base_model(env):
    nodes, pack, tiny, el, d = env
    base_model, released = _release(pack, tiny, d)
    out, lora = d / "elastic_routers" / "qwen-e-dit.safetensors", d / "qwen-e-dit-lora.safetensors"
    cli = importlib.import_module(pack.__name__ + ".elastic_core.cli")  # the `elastic-dit` command
    assert cli.main(["convert", str(d / "released.safetensors"), str(out), "--base",
                     str(d / "base.safetensors"), "--lora-rank", "4", "--lora-dtype", "fp32", "--lora-out", str(lora)]) == 0
    shutil.copy(lora, d / "loras" / lora.name)
    tensors = load_file(str(lora))
    n_low_rank = sum(k.endswith(".lora_up.weight") for k in tensors)
    n_diffs = sum(k.endswith(".diff") for k in tensors)
    assert n_low_rank == sum(v.dim() == 2 for v in released.values()) and n_diffs == len(released) - n_low_rank
    loaded = nodes.NODE_CLASS_MAPPINGS["LoraLoaderModelOnly"]().load_lora_model_only(base_model, lora.name, 1.0)[0]
    assert set(loaded.patches) == {f"diffusion_model.{k}" for k in released}  # every tensor mapped, biases too
    reference = _with_weights(tiny, released)
    want = tiny.sample(reference, "qwen", cfg=2.0)
    assert not torch.allclose(tiny.sample(base_model, "qwen", cfg=2.0), want, atol=1e-3), "setup: the change matters"
    torch.testing.assert_close(tiny.sample(loaded, "qwen", cfg=2.0), want, atol=1e-4, rtol=1e-4)
    # the router file: through the loader node, applied to the LoRA'd base like the released model
    ckpt = nodes.NODE_CLASS_MAPPINGS["ElasticDiTRouterLoader"]().load(out.name)[0]
    assert ckpt.meta.provenance["lora"] == lora.name and ckpt.meta.family == "qwen_image"
    a = tiny.sample(el.apply(nodes, loaded, ckpt, cache=False), "qwen", cfg=2.0)
    b = tiny.sample(el.apply(nodes, reference, ckpt, cache=False), "qwen", cfg=2.0)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_the_lora_applies_to_an_fp8_copy_of_the_base(env):
    nodes, pack, tiny, el, d = env
    if not (d / "loras" / "qwen-e-dit-lora.safetensors").exists():
        pytest.skip("needs the file the previous test converts")
    base = load_file(str(d / "base.safetensors"))
    released = {k: v for k, v in load_file(str(d / "released.safetensors")).items() if not k.startswith("gate_")}
    fp8 = dict(dtype=torch.float8_e4m3fn, manual_cast=torch.float32)
    with torch.inference_mode():  # as ComfyUI loads and samples (its fp8 LoRA merge rounds in place)
        _fp8_case(nodes, tiny, base, released, fp8)


def _fp8_case(nodes, tiny, base, released, fp8):
    base8 = _with_weights(tiny, base, **fp8)
    assert base8.get_model_object("diffusion_model").transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    loaded = nodes.NODE_CLASS_MAPPINGS["LoraLoaderModelOnly"]().load_lora_model_only(
        base8, "qwen-e-dit-lora.safetensors", 1.0)[0]
    assert set(loaded.patches) == {f"diffusion_model.{k}" for k in released}
    want = tiny.sample(_with_weights(tiny, released, **fp8), "qwen", cfg=2.0)  # the release, stored in fp8
    got, plain = tiny.sample(loaded, "qwen", cfg=2.0), tiny.sample(base8, "qwen", cfg=2.0)
    err, before = (got - want).abs().mean(), (plain - want).abs().mean()
    assert err < 0.25 * before, (float(err), float(before))  # fp8 rounding stays; the fine-tune arrives
