"""Apply Elastic DiT's cache_budget on tiny real Flux / Qwen-Image models through comfy.sample: no limit
gives today's images bit for bit, a budget that keeps nothing runs exactly, bad budgets are refused."""
import math

import pytest
import torch

BAND = 0.505  # inside the released band [0.5, 0.515]: every block reuses where it can


@pytest.fixture(scope="module")
def env(comfy):
    from tests.comfy import elastic, tiny
    return comfy[0], comfy[1], tiny, elastic


def _borderline(pack, el, model):
    ckpt = el.make_routers(pack, model)
    for r in ckpt.routers:
        el.force(r, p=BAND)
    return ckpt


@pytest.mark.parametrize("kind", ["flux", "qwen"])
def test_no_limit_is_todays_image_bit_for_bit(env, kind):
    nodes, pack, tiny, el = env
    model = tiny.build(kind)
    ckpt = _borderline(pack, el, model)
    policy = pack.elastic_core.policy.Policy(pack.elastic_core.config.ElasticConfig())  # the engine without a budget
    today = pack.nodes.patch.apply_elastic(model, ckpt, policy)
    ref = tiny.sample(today, kind, batch=2)
    assert el.last_record(today).counts()["reuse"] > 0
    for budget in (0.0, 1.0):  # no limit; the default, which never binds on a tiny model
        patched = el.apply(nodes, model, ckpt, cache_budget=budget)
        assert torch.equal(tiny.sample(patched, kind, batch=2), ref), budget
        rec = el.last_record(patched)
        assert rec.events == el.last_record(today).events and rec.counts()["nocache"] == 0
        assert rec.config["cache_budget"] == (None if budget == 0 else 2**30)


@pytest.mark.parametrize("kind", ["flux", "qwen"])
def test_a_budget_that_keeps_nothing_runs_exactly_and_says_so(env, kind):
    nodes, pack, tiny, el = env
    model = tiny.build(kind)
    ckpt = _borderline(pack, el, model)
    off = tiny.sample(el.apply(nodes, model, ckpt, cache=False), kind)
    tight = el.apply(nodes, model, ckpt, cache_budget=1e-9)  # one byte: no residual fits
    assert torch.equal(tiny.sample(tight, kind), off)  # every would-be reuse ran: exact compute
    rec = el.last_record(tight)
    c = rec.counts()
    assert c["reuse"] == 0 and c["nocache"] > 0 and rec.cache_bytes_peak == 0
    assert "for want of cache" in rec.summary()
    image, record_json = nodes.NODE_CLASS_MAPPINGS["ElasticDiTStats"]().stats(tight, {"samples": None}, "cond", 0)
    assert image.shape[-1] == 3 and '"nocache"' in record_json


def test_cache_device_cpu_gives_the_same_image_under_a_budget(env):
    nodes, pack, tiny, el = env
    model = tiny.build("flux")
    ckpt = _borderline(pack, el, model)
    free = el.apply(nodes, model, ckpt, cache_budget=0.0)
    tiny.sample(free, "flux", batch=2)
    budget = el.last_record(free).cache_bytes_peak / 3 / 2**30  # a third of what the run holds unbounded
    near = el.apply(nodes, model, ckpt, cache_budget=budget)
    far = el.apply(nodes, model, ckpt, cache_budget=budget, cache_device="cpu")
    assert torch.equal(tiny.sample(far, "flux", batch=2), tiny.sample(near, "flux", batch=2))
    rec_near, rec_far = el.last_record(near), el.last_record(far)
    assert rec_far.events == rec_near.events
    assert rec_far.counts()["reuse"] > 0 and rec_far.counts()["nocache"] > 0


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "1 GB"])
def test_a_bad_budget_is_refused_at_apply(env, bad):
    nodes, pack, tiny, el = env
    model = tiny.build("flux")
    before = dict(model.model_options["transformer_options"])
    with pytest.raises(ValueError, match=r"cache_budget must be a number of GB >= 0 \(0 = no limit\)"):
        el.apply(nodes, model, el.make_routers(pack, model), cache_budget=bad)
    assert model.model_options["transformer_options"] == before  # the user's MODEL is untouched
