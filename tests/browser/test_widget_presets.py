"""In a browser, after the session's run: each preset of Apply Elastic DiT marks the sliders it
overrides (greyed, the label says the value that runs or that the router file sets it), a run with a
preset records what ran, and the widget then shows that run, not a what-if estimate. Back on "sliders"
nothing is marked.

Skipped, with the reason, where ComfyUI, Chromium or the Python package `playwright` is missing.
"""
from __future__ import annotations

import pytest

from tests.browser import support

REASON = support.skip_reason()
if REASON is not None:
    pytest.skip(f"browser test: {REASON}", allow_module_level=True)

KNOBS = ("tau", "delta", "max_reuse", "cache_start_percent", "cache_end_percent")
PAPER_FLUX = {"tau": 0.5, "delta": 0.1, "max_reuse": 3}  # elastic_core.config.PAPER_PRESETS["flux-dev"]


def _state(page, node_id):
    return page.evaluate("id => window.__edt.widgetState(id)", node_id)


def _set(page, node_id, name, value):
    return page.evaluate("([id, n, v]) => window.__edt.setKnob(id, n, v)", [node_id, name, value])


def _marked(state):
    return {m["name"]: m for m in state["marks"] if m and m["disabled"]}


def _queue_and_wait(page, server, timeout_s=120):
    n = len(page.evaluate("() => window.__edt.events()"))
    queued = page.evaluate("() => window.__edt.queue()")
    page.wait_for_function(
        f"() => window.__edt.events().slice({n}).some(e => ['execution_success', 'execution_error', "
        "'execution_interrupted'].includes(e.ev))", timeout=timeout_s * 1000)
    new = page.evaluate(f"() => window.__edt.events().slice({n})")
    failed = [e for e in new if e["ev"] in ("execution_error", "execution_interrupted")]
    assert not failed, f"the prompt failed: {failed} (queued {queued})\n{server.log()[-2000:]}"
    page.wait_for_timeout(300)


def test_presets_mark_the_sliders_and_the_widget_shows_what_ran(run, browser, server):
    page, apply_id = browser.page, run["ids"]["apply"]
    recorded = {m["name"]: m["value"] for m in _state(page, apply_id)["marks"] if m}
    try:
        st = _set(page, apply_id, "tau", 0.8)  # a slider value the presets will override
        assert not _marked(st), f"'sliders' must mark nothing: {st['marks']}"

        st = _set(page, apply_id, "preset", "paper: FLUX.1-dev")
        marked = _marked(st)
        assert set(marked) == set(PAPER_FLUX), st["marks"]
        for name, value in PAPER_FLUX.items():  # the slider shows the value that will run
            assert marked[name]["value"] == value and str(value) in marked[name]["label"], marked[name]
        _queue_and_wait(page, server)
        st = _state(page, apply_id)
        cfg = st["payload"]["config"]
        assert {k: cfg[k] for k in PAPER_FLUX} == PAPER_FLUX, cfg
        assert cfg["cache_start"] == recorded["cache_start_percent"], "the preset must keep the sliders' window"
        assert st["estimate"] == "0" and not st["summary"].startswith("what-if"), st["summary"]
        support.shot(browser, f"{server.label}-widget-preset-paper.png")

        st = _set(page, apply_id, "preset", "router file defaults")
        assert set(_marked(st)) == set(KNOBS), st["marks"]
        assert all(m["label"].endswith("from router file") for m in _marked(st).values())
        _queue_and_wait(page, server)
        st = _state(page, apply_id)
        assert st["estimate"] == "0" and not st["summary"].startswith("what-if"), st["summary"]
        assert st["payload"]["config"]["tau"] == 0.5  # the test routers' file defaults: the engine's own

        st = _set(page, apply_id, "preset", "sliders")
        assert not _marked(st), st["marks"]
        assert all(m["label"] in (None, m["name"]) for m in st["marks"] if m), st["marks"]
    finally:
        _set(page, apply_id, "preset", "sliders")
        for name, value in recorded.items():
            _set(page, apply_id, name, value)
