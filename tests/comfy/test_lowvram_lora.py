"""The user's MODEL never changes, also under lowvram with a LoRA.

Under lowvram ComfyUI keeps weights where they are and applies a LoRA per call: each comfy.ops layer
carries the loading patcher's `LowVramPatch` in `weight_function`. When a clone of the same model
loads, the previous patcher is detached without unpatching. MLP twins must then leave no trace of
any patcher's load state on the user's layers.
"""
import pytest
import torch

import tests.comfy  # noqa: F401
from tests.comfy.test_lifecycle import _add_diff_patches, _diffs, _force_lowvram, _refs

WIDTH_KEYS = {  # a weight per twinned layer kind: double MLPs, fused single projections, Qwen MLP
    "flux": ["double_blocks.0.img_mlp.0.weight", "single_blocks.0.linear1.weight", "single_blocks.1.linear2.weight"],
    "chroma": ["double_blocks.1.txt_mlp.2.weight", "single_blocks.0.linear1.weight"],
    "qwen": ["transformer_blocks.0.img_mlp.net.0.proj.weight", "transformer_blocks.1.img_mlp.net.2.weight"],
}


@pytest.fixture(scope="module")
def env(comfy):
    from tests.comfy import elastic, tiny
    nodes, pack = comfy
    return nodes, pack, tiny, elastic


def _load_state(model):
    """Per comfy.ops layer of the user's model: the lowvram state ComfyUI hangs on it."""
    dm = model.get_model_object("diffusion_model")
    out = {}
    for name, m in dm.named_modules():
        if hasattr(m, "comfy_cast_weights"):
            out[name] = (len(getattr(m, "weight_function", [])), len(getattr(m, "bias_function", [])),
                         hasattr(m, "prev_comfy_cast_weights"))
    return out


@pytest.mark.parametrize("kind", list(WIDTH_KEYS))
def test_lowvram_lora_then_apply_leaves_base_model_unchanged(env, kind, monkeypatch):
    import comfy.model_management as mm
    nodes, pack, tiny, el = env
    base = tiny.build(kind)
    expected = tiny.sample(tiny.build(kind), kind)  # the same weights, never touched by anything
    lora = _add_diff_patches(base, _diffs(base, WIDTH_KEYS[kind]))
    ckpt = el.make_routers(pack, base)
    for i in range(len(_refs(pack, base))):
        el.force(ckpt.routers[i], width_idx=i % 3)  # every block narrowed: every twin in use
    _force_lowvram(monkeypatch)
    try:
        dense_lora = tiny.sample(lora, kind)  # base + LoRA, loaded lowvram: LoRA applied per call
        assert base.model.model_lowvram
        patched = el.apply(nodes, lora, ckpt, cache=False)
        tiny.sample(patched, kind)
        mm.unload_all_models()
        out = tiny.sample(base, kind)
        assert not torch.allclose(dense_lora, expected, atol=1e-4), "test setup: the LoRA must matter"
        diff = (out - expected).abs().max()
        assert torch.allclose(out, expected, atol=1e-6), f"{kind}: the plain model moved by {diff}"
        again = tiny.sample(lora, kind)
        assert torch.allclose(again, dense_lora, atol=1e-6), "the LoRA model itself must still sample as before"
    finally:
        mm.unload_all_models()
    assert all(v == (0, 0, False) for v in _load_state(base).values()), "load state left on the user's layers"
