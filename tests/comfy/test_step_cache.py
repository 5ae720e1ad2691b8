"""Apply Elastic DiT with ComfyUI's own step caches (EasyCache, LazyCache) on the same model, in both
orders: steps the cache answered never reach the model; the record counts them as every block skipped,
so num_steps, the recorded steps, the heatmap and the executed compute agree. Skipped, with the reason
printed, on a ComfyUI without those nodes."""
import importlib

import pytest

import tests.comfy  # noqa: F401

STEPS = 4


@pytest.fixture(scope="module")
def env(comfy):
    from tests.comfy import elastic, tiny
    nodes, pack = comfy
    try:
        caches = importlib.import_module("comfy_extras.nodes_easycache")
    except ImportError as e:
        pytest.skip(f"this ComfyUI has no EasyCache / LazyCache ({e})")
    return nodes, pack, tiny, elastic, caches


def _cache(caches, name, model):
    node = getattr(caches, name, None)
    if node is None:
        pytest.skip(f"this ComfyUI has no {name}")
    out = node.execute(model, reuse_threshold=3.0, start_percent=0.0, end_percent=1.0, verbose=False)
    return out.args[0] if hasattr(out, "args") else out[0]


@pytest.mark.parametrize("name", ["EasyCacheNode", "LazyCacheNode"])
@pytest.mark.parametrize("cache_first", [False, True])
def test_steps_a_step_cache_answered_are_recorded_as_skipped(env, name, cache_first):
    nodes, pack, tiny, el, caches = env
    model = tiny.build("flux")
    ckpt = el.make_routers(pack, model)
    plain = el.apply(nodes, model, ckpt)
    tiny.sample(plain, "flux", steps=STEPS)
    dense = el.last_record(plain)
    patched = el.apply(nodes, _cache(caches, name, model), ckpt) if cache_first else _cache(caches, name, plain)
    tiny.sample(patched, "flux", steps=STEPS)
    rec = el.last_record(patched)
    ev = rec.events
    unreached = {s for s in range(STEPS) if all(ev["p"][j] is None for j in range(len(rec)) if ev["step"][j] == s)}
    assert unreached, f"{name} skipped no step: the test shows nothing"
    assert rec.num_steps == STEPS and sorted(set(ev["step"])) == list(range(STEPS)) == sorted(rec.steps)
    assert len(rec) == len(dense)  # every step, block and row recorded once
    assert all(a == pack.elastic_core.stats.SKIP for a, s in zip(ev["action"], ev["step"]) if s in unreached)
    for k in ("dense_attn", "dense_mlp"):  # the dense reference counts every step
        assert rec.flops[k] == pytest.approx(dense.flops[k])
    assert rec.flops["router"] == pytest.approx(dense.flops["router"] * (STEPS - len(unreached)) / STEPS)
    assert rec.executed_fraction() < dense.executed_fraction()
    pl = pack.elastic_core.heatmap.payload(rec)
    assert all(v["action"][b][s] == pack.elastic_core.stats.SKIP for v in pl["views"]
               for b in range(len(rec.blocks)) for s in unreached)
