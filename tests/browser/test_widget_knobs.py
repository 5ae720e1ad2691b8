"""In a browser, after the run of test_widget_e2e.py (the session's shared graph): the Apply node's tau, delta
and max_reuse knobs are sliders whose every move re-colours the last run as a what-if estimate, through the
widget's own setter, the mouse (drag and click on the canvas slider), and the DOM sliders of the frontend's
opt-in Nodes 2.0; and nothing the pack's JS called made the frontend warn, over the whole session.

Skipped, with the reason, where ComfyUI, Chromium or the Python package `playwright` is missing.
"""
from __future__ import annotations

import re

import pytest

from tests.browser import support

REASON = support.skip_reason()
if REASON is not None:
    pytest.skip(f"browser test: {REASON}", allow_module_level=True)

from tests.browser.conftest import N_BLOCKS, STEPS  # noqa: E402


def _skipped(summary: str) -> int:
    return int(re.search(r"skipped (\d+)%", summary).group(1))


def _knob(state, name):
    return next(k for k in state["knobs"] if k["name"] == name)["value"]


def _drag_knob(page, node_id, name, start: float, end: float) -> dict:
    """Press the mouse on a slider at `start` (fraction of its width), move it to `end` in steps, release."""
    a = page.evaluate("([id, n, f]) => window.__edt.widgetPoint(id, n, f)", [node_id, name, start])
    b = page.evaluate("([id, n, f]) => window.__edt.widgetPoint(id, n, f)", [node_id, name, end])
    page.mouse.move(a["x"], a["y"])
    page.mouse.down()
    for k in range(1, 9):
        page.mouse.move(a["x"] + (b["x"] - a["x"]) * k / 8, a["y"])
        page.wait_for_timeout(25)
    page.mouse.up()
    page.wait_for_timeout(200)
    return page.evaluate("id => window.__edt.widgetState(id)", node_id)


def _set(page, node_id, name, value) -> dict:
    return page.evaluate("([id, n, v]) => window.__edt.setKnob(id, n, v)", [node_id, name, value])


def _restore(page, node_id, recorded) -> None:
    """Later tests expect the recorded knob values."""
    page.evaluate("([id, v]) => window.__edt.restoreKnobs(id, v)",
                  [node_id, {k: recorded[k] for k in ("tau", "delta", "max_reuse")}])


def test_knobs_are_sliders(run, browser):
    st = browser.page.evaluate("id => window.__edt.widgetState(id)", run["ids"]["apply"])
    knobs = {k["name"]: k for k in st["knobs"] if k}
    assert set(knobs) == {"tau", "delta", "max_reuse"}, st["knobs"]
    for k in knobs.values():  # `display: "slider"` -> the frontend's slider widget
        assert k["type"] == "slider", f"{k['name']} is a {k['type']!r} widget, not a slider: {k}"
        assert k["callback"] == "function"
    assert (knobs["tau"]["options"]["min"], knobs["tau"]["options"]["max"]) == (0, 1)


def test_each_knob_recolours_the_run_as_a_what_if_and_back(run, browser, server):
    """Through the widget's own setter (what a drag, a click or the arrows end in) for each knob."""
    page, apply_id = browser.page, run["ids"]["apply"]
    since, recorded, base = len(browser.console), run["state"]["payload"]["config"], run["state"]["summary"]
    try:
        est = _set(page, apply_id, "tau", 0.75)
        assert est["estimate"] == "1" and est["summary"].startswith("what-if estimate: "), est
        assert _skipped(est["summary"]) > _skipped(base), (est["summary"], base)  # a higher threshold skips more
        assert est["cells"] == str(N_BLOCKS * STEPS)
        support.shot(browser, f"{server.label}-widget-whatif-full.png")
        layout = page.evaluate("id => window.__edt.focus(id, 0.9)", apply_id)
        support.shot(browser, f"{server.label}-widget-whatif.png")
        print(f"[browser e2e] what-if at tau 0.75: {est['summary']!r}; zoomed layout {layout}")
        for name, value, check in (("tau", 0.75, None), ("max_reuse", 0, "reused 0%"), ("delta", 0.3, None)):
            moved = _set(page, apply_id, name, value)
            assert moved["estimate"] == "1" and moved["summary"].startswith("what-if estimate: "), (name, moved)
            assert check is None or check in moved["summary"], (name, moved["summary"])
            back = _set(page, apply_id, name, recorded[name])
            assert back["estimate"] == "0" and back["summary"] == base, (name, back["summary"], base)
        errs = support.pack_errors(browser, since)
        assert not errs, f"console errors about the pack or a widget while moving the knobs: {errs}"
    finally:
        _restore(page, apply_id, recorded)


def test_mouse_drag_and_click_on_the_tau_slider(run, browser, server):
    """As a user does it: drag the tau slider from its value to 3/4, then click at 1/4. Both go through the
    frontend's own canvas slider code, which must reach the pack's callback and re-colour the run."""
    page, apply_id = browser.page, run["ids"]["apply"]
    recorded, base = run["state"]["payload"]["config"], run["state"]["summary"]
    try:
        page.evaluate("id => window.__edt.focus(id, 0.9)", apply_id)
        dragged = _drag_knob(page, apply_id, "tau", recorded["tau"], 0.75)
        tau = _knob(dragged, "tau")
        assert abs(tau - 0.75) < 0.03, f"dragging the tau slider from {recorded['tau']} to 3/4 set tau to {tau}"
        assert dragged["estimate"] == "1" and dragged["summary"].startswith("what-if estimate: "), dragged["summary"]
        assert _skipped(dragged["summary"]) > _skipped(base), (dragged["summary"], base)
        support.shot(browser, f"{server.label}-widget-dragged.png")
        pt = page.evaluate("([id, f]) => window.__edt.widgetPoint(id, 'tau', f)", [apply_id, 0.25])
        page.mouse.click(pt["x"], pt["y"])
        page.wait_for_timeout(200)
        clicked = page.evaluate("id => window.__edt.widgetState(id)", apply_id)
        tau = _knob(clicked, "tau")
        assert abs(tau - 0.25) < 0.03, f"a click at 1/4 of the tau slider set tau to {tau}"
        assert clicked["estimate"] == "1" and _skipped(clicked["summary"]) < _skipped(base), clicked["summary"]
        print(f"[browser e2e] mouse: drag to 3/4 -> tau {_knob(dragged, 'tau'):.3f} ({dragged['summary']!r}); "
              f"click at 1/4 -> tau {tau:.3f} ({clicked['summary']!r})")
        back = _set(page, apply_id, "tau", recorded["tau"])
        assert back["estimate"] == "0" and back["summary"] == base
    finally:
        _restore(page, apply_id, recorded)


def test_nodes_2_sliders_drag_and_the_what_if_follows(run, browser, server):
    """With the frontend's opt-in "Modern Node Design (Nodes 2.0)" the knobs are DOM sliders and the heatmap
    a DOM element inside the node: dragging tau's slider must still reach the what-if."""
    page, apply_id = browser.page, run["ids"]["apply"]
    fe = page.evaluate("() => window.__edt.frontendVersion()") or "?"
    recorded = run["state"]["payload"]["config"]
    if page.evaluate("() => window.__edt.setNodes2(true)") is None:
        pytest.skip(f"frontend {fe} has no Nodes 2.0 setting")
    try:
        page.evaluate("id => window.__edt.focus(id, 0.9)", apply_id)
        dom = page.evaluate("id => window.__edt.nodes2Knobs(id)", apply_id)
        assert dom["node"] and len(dom["sliders"]) >= 3, f"frontend {fe}, Nodes 2.0: no slider thumbs on the Apply node: {dom}"
        assert [s["value"] for s in dom["sliders"][:3]] == [recorded["tau"], recorded["delta"], recorded["max_reuse"]], dom
        if fe.startswith("1.27."):  # that frontend's first, experimental Nodes 2.0 draws no DOM widget of any pack
            assert not dom["heatmap"]
            pytest.skip(f"frontend {fe}: its experimental Nodes 2.0 draws no DOM widgets (the heatmap); from 1.35 it does")
        assert dom["heatmap"], f"frontend {fe}, Nodes 2.0: the heatmap is not inside the Apply node"
        tau = dom["sliders"][0]
        page.mouse.move(tau["x"], tau["y"])
        page.mouse.down()
        for k in range(1, 9):
            page.mouse.move(tau["x"] + 3 * k, tau["y"])
            page.wait_for_timeout(25)
        page.mouse.up()
        page.wait_for_timeout(300)
        st = page.evaluate("id => window.__edt.widgetState(id)", apply_id)
        support.shot(browser, f"{server.label}-widget-nodes2.png")
        assert _knob(st, "tau") > recorded["tau"], f"dragging the Nodes 2.0 tau slider right left tau at {_knob(st, 'tau')}"
        assert st["estimate"] == "1" and st["summary"].startswith("what-if estimate: "), st["summary"]
        assert st["cells"] == str(N_BLOCKS * STEPS), st
        print(f"[browser e2e] Nodes 2.0 on frontend {fe}: tau dragged to {_knob(st, 'tau')}: {st['summary']!r}")
    finally:
        page.evaluate("() => window.__edt.setNodes2(false)")
        _restore(page, apply_id, recorded)


def test_no_deprecated_api_warnings_from_the_pack(run, browser):
    """Nothing the pack's JS calls makes the frontend warn (deprecations included), over everything the tests
    did: the page load, workflow drops, the live run, the knobs. Attributed by the pack's files on the stack."""
    got = browser.page.evaluate("() => window.__edt.fromPack()")
    assert not got, f"console warnings / errors raised from the pack's code: {got}"
