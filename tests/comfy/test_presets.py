"""Apply's presets and sliders: the run record holds exactly what ran, and the cache window has one
meaning (percent of the noise schedule) from the slider through the run to the record."""
import pytest

import tests.comfy  # noqa: F401

SLIDERS = dict(tau=0.8, delta=0.05, max_reuse=4, cache_start_percent=0.25, cache_end_percent=0.75)


@pytest.fixture(scope="module")
def env(comfy):
    from tests.comfy import elastic, tiny
    nodes, pack = comfy
    return nodes, pack, tiny, elastic


def _run(env, preset, ckpt=None, **kw):
    nodes, pack, tiny, el = env
    model = tiny.build("flux")
    ckpt = ckpt or el.make_routers(pack, model)
    patched = el.apply(nodes, model, ckpt, preset=preset, **{**SLIDERS, **kw})
    tiny.sample(patched, "flux", steps=8)
    return pack, el.last_record(patched)


def test_sliders_are_what_runs(env):
    pack, rec = _run(env, "sliders")
    c = rec.config
    assert (c["tau"], c["delta"], c["max_reuse"], c["cache_start"], c["cache_end"]) == (0.8, 0.05, 4, 0.25, 0.75)
    assert c["version"] == pack.elastic_core.config.ElasticConfig.VERSION
    # 8 euler steps on the simple schedule: steps 2..5 lie in [25 %, 75 %) of the noise schedule
    assert sorted(rec.cache_steps) == [2, 3, 4, 5]


@pytest.mark.parametrize("preset", ["paper: Qwen-Image base", "paper: Qwen-Image turbo", "paper: FLUX.1-dev"])
def test_paper_presets_set_the_thresholds_and_keep_the_rest(env, preset):
    nodes, pack, tiny, el = env
    from_node = pack.nodes.apply_node.PRESETS[preset]
    want = pack.elastic_core.config.PAPER_PRESETS[from_node]
    _, rec = _run(env, preset, skip_blocks=False)
    c = rec.config
    assert (c["tau"], c["delta"], c["max_reuse"]) == (want.tau, want.delta, want.max_reuse)
    assert (c["cache_start"], c["cache_end"], c["skip"]) == (0.25, 0.75, False)  # what the preset does not set


def test_router_file_defaults_preset(env):
    nodes, pack, tiny, el = env
    model = tiny.build("flux")
    ckpt = el.make_routers(pack, model)
    ec = pack.elastic_core
    meta = ec.checkpoint.RouterMeta.for_routers(ckpt.routers, "flux", defaults={
        "tau": 0.3, "delta": 0.1, "max_reuse": 2, "cache_start": 0.5, "cache_end": 1.0})
    ckpt = ec.checkpoint.RouterCheckpoint(ckpt.routers, meta, "file")
    _, rec = _run(env, "router file defaults", ckpt=ckpt)
    c = rec.config
    assert (c["tau"], c["delta"], c["max_reuse"], c["cache_start"], c["cache_end"]) == (0.3, 0.1, 2, 0.5, 1.0)
    assert sorted(rec.cache_steps) == [4, 5, 6, 7]  # the file's window, in the same unit as the sliders'


def test_router_file_defaults_ignore_the_window_sliders_they_grey_out(env):
    """`router file defaults` takes the window from the file: sliders it ignores (start past end) do not
    stop it; the presets that use the slider window still refuse them."""
    nodes, pack, tiny, el = env
    model = tiny.build("flux")
    ckpt = el.make_routers(pack, model)
    crossed = dict(cache_start_percent=0.8, cache_end_percent=0.3)
    _, rec = _run(env, "router file defaults", ckpt=ckpt, **crossed)
    want = ckpt.meta.elastic_config()
    assert (rec.config["cache_start"], rec.config["cache_end"]) == (want.cache_start, want.cache_end)
    for preset in ("sliders", "paper: FLUX.1-dev"):
        with pytest.raises(ValueError, match=r"cache_start_percent \(0.8\) must not exceed"):
            _run(env, preset, ckpt=ckpt, **crossed)


def test_widget_marks_what_each_preset_overrides(env, tmp_path):
    """The server's preset table through the widget's pure marking (node --test): the sliders marked are
    exactly what Apply takes from the preset when the graph runs."""
    import json
    import os
    import shutil
    import subprocess
    nodes, pack, tiny, el = env
    node_js = shutil.which("node")
    if node_js is None:
        pytest.skip("node (Node.js) is not installed")
    table = pack.nodes.apply_node.preset_table()
    assert set(table) == set(pack.nodes.apply_node.PRESETS)
    overrides = {}
    for name in table:  # what the node really overrides: run it and see which inputs it ignored
        _, rec = _run(env, name, skip_blocks=True)
        c = rec.config
        ran = {"tau": c["tau"], "delta": c["delta"], "max_reuse": c["max_reuse"],
               "cache_start_percent": c["cache_start"], "cache_end_percent": c["cache_end"]}
        overrides[name] = [k for k, v in ran.items() if v != SLIDERS[k]]
    fixture = tmp_path / "presets.json"
    fixture.write_text(json.dumps({"table": table, "overrides": overrides}))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([node_js, "--test", os.path.join(root, "tests", "js", "presets.test.mjs")], cwd=root,
                       env={**os.environ, "ELASTIC_PRESETS": str(fixture)}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "# fail 0" in r.stdout and "# skipped 0" in r.stdout, r.stdout + r.stderr
