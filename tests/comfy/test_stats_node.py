"""The stats node on a finished run, and the messages a live view receives during one."""
import json

import pytest
import torch


@pytest.fixture(scope="module")
def env(comfy):
    from tests.comfy import elastic, tiny
    return comfy[0], comfy[1], tiny, elastic


def _run(env, kind="flux"):
    nodes, pack, tiny, el = env
    model = tiny.build(kind)
    ckpt = el.make_routers(pack, model)
    el.force(ckpt.routers[1], p=0.2)
    el.force(ckpt.routers[2], width_idx=1)
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0)
    samples = tiny.sample(patched, kind, steps=3)
    return patched, {"samples": samples}


def test_stats_node_outputs_heatmap_image_and_record(env):
    nodes, pack, tiny, el = env
    patched, latent = _run(env)
    node = nodes.NODE_CLASS_MAPPINGS["ElasticDiTStats"]()
    image, text = node.stats(patched, latent, "uncond", 0)
    assert image.dtype == torch.float32 and image.dim() == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.shape[1] > 4 * 16
    rec = json.loads(text)
    assert rec["schema"] == "elastic-dit/run-record" and rec["totals"]["counts"]["skip"] == 2 * 3
    cond, _ = node.stats(patched, latent, "cond", 0)
    assert cond.shape == image.shape


def test_stats_node_errors_are_clear(env):
    nodes, pack, tiny, el = env
    node = nodes.NODE_CLASS_MAPPINGS["ElasticDiTStats"]()
    plain = tiny.build("flux")
    with pytest.raises(ValueError, match="must come from an Apply Elastic DiT node"):
        node.stats(plain, {}, "cond", 0)
    fresh = el.apply(nodes, plain, el.make_routers(pack, plain))
    with pytest.raises(ValueError, match="has not sampled yet"):
        node.stats(fresh, {}, "cond", 0)
    patched, latent = _run(env)
    with pytest.raises(ValueError, match="no cond sample 3; it has: cond 0, uncond 0"):
        node.stats(patched, latent, "cond", 3)


class _Wire:
    """Stands in for the websocket: records what the live feed sends (the transport, not ComfyUI)."""
    client_id = "client-1"

    def __init__(self):
        self.sent = []

    def send_sync(self, event, data, sid):
        self.sent.append((event, json.loads(json.dumps(data)), sid))


def test_live_feed_sends_header_columns_and_final_payload(env):
    nodes, pack, tiny, el = env
    model = tiny.build("qwen")
    patched = el.apply(nodes, model, el.make_routers(pack, model))
    patch = patched.model_options["transformer_options"]["elastic_dit"]
    patch.node_id = "7"
    wire = _Wire()
    orig_init = pack.nodes.live.LiveFeed.__init__

    def init(self, node_id):
        orig_init(self, node_id)
        self.server = wire
    pack.nodes.live.LiveFeed.__init__ = init
    try:
        tiny.sample(patched, "qwen", steps=3)
    finally:
        pack.nodes.live.LiveFeed.__init__ = orig_init
    events = [e for e, _, _ in wire.sent]
    assert events == ["elastic_dit.start", "elastic_dit.step", "elastic_dit.step", "elastic_dit.step",
                      "elastic_dit.done"]
    assert all(d["node"] == "7" and sid == "client-1" for _, d, sid in wire.sent)
    steps = [d["step"] for e, d, _ in wire.sent if e == "elastic_dit.step"]
    assert steps == [0, 1, 2]
    col = wire.sent[1][1]
    assert {v["stream"] for v in col["views"]} == {"cond", "uncond"} and len(col["views"][0]["p"]) == 3
    done = wire.sent[-1][1]
    assert done["schema"] == "elastic-dit/heatmap" and len(done["views"][0]["p"][0]) == 3
