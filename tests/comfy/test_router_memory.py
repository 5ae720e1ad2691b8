"""The routers are a model of their own to ComfyUI's memory management (an additional model of the
patched clone): loaded with the diffusion model for a run, counted in what ComfyUI makes room for,
loadable under lowvram, and freed like any model. The user's MODEL gets nothing.

On a CPU load device ComfyUI always loads fully, so a GPU's budget is simulated where it matters: the
memory ComfyUI is asked for, from which its free_memory / lowvram decisions on a GPU are made.
"""
import pytest
import torch

import tests.comfy  # noqa: F401
from tests.comfy.test_lifecycle import _force_lowvram


@pytest.fixture(scope="module")
def env(comfy):
    from tests.comfy import elastic, tiny
    return comfy[0], comfy[1], tiny, elastic


def _spy_loads(monkeypatch):
    import comfy.model_management as mm
    calls = []
    orig = mm.load_models_gpu

    def load_models_gpu(models, *args, **kwargs):
        calls.append(list(models))
        return orig(models, *args, **kwargs)
    monkeypatch.setattr(mm, "load_models_gpu", load_models_gpu)
    return calls


def _loaded(mm, module) -> bool:
    """Is `module` among ComfyUI's loaded models? (A LoadedModel's patcher is a weak reference.)"""
    return any(lm.model is not None and lm.model.model is module for lm in mm.current_loaded_models)


def _bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@pytest.mark.parametrize("kind", ["qwen", "flux"])
def test_routers_load_with_the_model_and_are_counted(env, kind, monkeypatch):
    import comfy.model_management as mm
    nodes, pack, tiny, el = env
    model = tiny.build(kind)
    ckpt = el.make_routers(pack, model)
    patched = el.apply(nodes, model, ckpt)
    calls = _spy_loads(monkeypatch)
    tiny.sample(patched, kind, steps=2)
    (models,) = [c for c in calls if any(m.model is model.model for m in c)]
    routers = [m for m in models if m.model is ckpt.routers]
    assert len(routers) == 1, [type(m.model).__name__ for m in models]
    assert routers[0].model_size() == _bytes(ckpt.routers) > 0
    # a simulated GPU with room for the model but not for the model and the routers: the request ComfyUI
    # makes room for (or loads partially against) holds both, so it no longer overruns such a card
    budget = model.model_size() + _bytes(ckpt.routers) // 2
    asked = sum(m.model_size() for m in models)
    assert asked > budget >= model.model_size()
    assert _loaded(mm, ckpt.routers)
    key = pack.nodes.patch.ROUTERS_KEY
    assert model.get_additional_models_with_key(key) == [], "the user's MODEL got the routers"
    assert len(patched.clone().get_additional_models_with_key(key)) == 1  # clones keep them


def test_lowvram_load_gives_the_same_image(env, monkeypatch):
    nodes, pack, tiny, el = env
    model = tiny.build("qwen")
    ckpt = el.make_routers(pack, model)
    for i, r in enumerate(ckpt.routers):
        el.force(r, p=0.01 if i == 1 else 0.99, width_idx=i % 3)
    full = tiny.sample(el.apply(nodes, model, ckpt), "qwen", steps=2)
    _force_lowvram(monkeypatch)
    low = tiny.sample(el.apply(nodes, model, ckpt), "qwen", steps=2)
    assert torch.allclose(full, low, atol=1e-6)


def test_freed_like_any_model(env):
    import comfy.model_management as mm
    nodes, pack, tiny, el = env
    model = tiny.build("qwen")
    ckpt = el.make_routers(pack, model)
    patched = el.apply(nodes, model, ckpt)
    tiny.sample(patched, "qwen", steps=1)
    assert _loaded(mm, ckpt.routers)
    mm.unload_all_models()
    assert not _loaded(mm, ckpt.routers)
    assert next(ckpt.routers.parameters()).device == model.offload_device
