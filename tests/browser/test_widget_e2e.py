"""End to end, in a browser: a REAL ComfyUI server with this pack, its real frontend in headless Chromium.

1. The server starts with the pack and the test-only helper pack (tests/browser/helper_nodes) as custom
   nodes; neither fails to import.
2. Every workflows/*.json loads as a dropped file does, with no missing node and with the Elastic DiT
   nodes' widget values exactly as saved.
3. A graph built in the UI (tiny random-weight Flux -> Apply Elastic DiT <- test routers; KSampler;
   Elastic DiT Stats -> Preview Image) is queued from the page; the heatmap widget fills in live, then
   shows the finished run, re-colours it as a what-if when tau / delta / max_reuse move, and back.
4. The saved workflow carries none of the heatmap data; a screenshot of the widget is kept.

Skipped, with the reason, where ComfyUI, Chromium or the Python package `playwright` is missing.
Run: python -m pytest tests/browser -q -rs -s   (COMFYUI_PATH=... picks the ComfyUI)
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import sys
import time

import pytest

from devtools.comfy_boot import find_comfyui
from tests.browser import support

REASON = support.skip_reason()
if REASON is not None:
    pytest.skip(f"browser test: {REASON}", allow_module_level=True)

from tests.browser.helper_nodes import TINY  # noqa: E402

WORKFLOWS = sorted(glob.glob(os.path.join(support.REPO_ROOT, "workflows", "*.json")))
STEPS, CFG, SIZE = 5, 3.5, 128  # 128 px -> a 16x16, 16-channel SD3/Flux latent, what the tiny Flux takes
N_BLOCKS = TINY["depth"] + TINY["single"]
RUN_TIMEOUT_S = 120
PAGE_JS = os.path.join(support.HERE, "page.js")
APPLY_WIDGETS = ["tau", "delta", "max_reuse", "skip_blocks", "adapt_width", "cache", "cache_start_percent",
                 "cache_end_percent", "preset", "cache_device"]


def _t(label, t0):
    print(f"[browser e2e] {label}: {time.monotonic() - t0:.1f} s", flush=True)


@pytest.fixture(scope="module")
def server():
    comfy_dir, _ = find_comfyui()
    t0 = time.monotonic()
    srv = support.ComfyServer(comfy_dir)
    try:
        srv.start()
    except support.ServerDied as e:
        srv.stop()
        if e.missing_module:
            pytest.skip(f"browser test: this Python ({sys.executable}) cannot run ComfyUI's server: "
                        f"{e.missing_module}; install its requirements.txt (and `requests`), or run .ci/comfy-tests")
        raise
    except BaseException:
        srv.stop()
        raise
    _t(f"ComfyUI {srv.version} serving at {srv.url} ({' '.join(srv.cmd[1:])})", t0)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser(server):
    t0 = time.monotonic()
    # Settings first, as a returning user would have them: no template browser, no minimap over the canvas.
    status, _ = support.http(server.url + "/settings", {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False})
    assert status == 200, f"POST /settings answered {status}"
    b = support.Browser(server.url, support.chromium_path())
    try:
        b.page.add_init_script(path=PAGE_JS)
        b.page.goto(server.url + "/", wait_until="load", timeout=60_000)
        try:
            b.page.wait_for_function("() => window.__edt && window.__edt.ready()", timeout=60_000)
        except Exception as e:
            pytest.fail(f"the ComfyUI page did not get ready with the Elastic DiT extension within 60 s ({e}); "
                        f"console: {b.console[-20:]}")
        # Frontend 1.4x opens a template graph for a fresh profile after the app is ready; let that finish (its
        # requests are over when the network is idle) so that it cannot replace the first dropped workflow.
        try:
            b.page.wait_for_load_state("networkidle", timeout=20_000)
        except Exception as e:
            print(f"[browser e2e] the page's network did not go idle within 20 s ({e}); going on")
        b.page.wait_for_timeout(500)
        _t("frontend ready", t0)
        yield b
    finally:
        if b.blocked:
            print(f"[browser e2e] requests kept from leaving 127.0.0.1 (aborted): {sorted(set(b.blocked))}")
        b.close()


def _pack_errors(b: support.Browser, since: int = 0) -> list[dict]:
    """Console errors and page errors that concern this pack or a widget."""
    pat = re.compile(r"elastic|widget", re.I)
    return [m for m in b.console[since:] if m["type"] in ("error", "pageerror", "assert")
            and (pat.search(m["text"]) or pat.search(m["url"]) or pat.search(m["stack"]))]


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=0, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _shot(b: support.Browser, name: str) -> str:
    os.makedirs(support.ARTIFACTS, exist_ok=True)
    path = os.path.join(support.ARTIFACTS, name)
    b.page.screenshot(path=path)
    return path


def test_server_loaded_the_pack(server):
    fails = server.import_failures()
    assert not fails, "ComfyUI failed to import the pack:\n" + "\n".join(fails) + "\n" + server.log()[-6000:]
    status, body = support.http(server.url + "/object_info")
    assert status == 200
    info = json.loads(body)
    for t in ("ElasticDiTRouterLoader", "ElasticDiTApply", "ElasticDiTStats", "ElasticDiTTestTinyModel",
              "ElasticDiTTestRouters", "ElasticDiTTestConditioning"):
        assert t in info, f"{t} is not registered in the server's /object_info"
    status, js = support.http(server.url + f"/extensions/{support.PACK_LINK}/elastic_dit.js")
    assert status == 200 and b"registerExtension" in js, f"the pack's web extension is not served ({status})"


def test_page_loads_the_extension_cleanly(browser):
    assert browser.page.evaluate("() => window.__edt.ready()"), "the Elastic DiT extension is not registered in the page"
    errs = _pack_errors(browser)
    assert not errs, f"console errors about the pack or a widget while the page loaded: {errs}"


@pytest.mark.parametrize("path", WORKFLOWS or [None], ids=[os.path.basename(p) for p in WORKFLOWS] or ["none"])
def test_workflow_loads_with_widgets_as_saved(browser, server, path):
    if path is None:
        pytest.skip("workflows/ holds no .json workflow yet")
    with open(path) as f:
        text = f.read()
    data = json.loads(text)
    if "nodes" not in data:
        pytest.fail(f"{os.path.basename(path)} is not a UI workflow (no 'nodes'); a user drops UI workflows")
    since = len(browser.console)
    page, stem = browser.page, os.path.splitext(os.path.basename(path))[0]
    res = page.evaluate("([t, n]) => window.__edt.loadWorkflow(t, n)", [text, os.path.basename(path)])
    _shot(browser, f"{server.label}-workflow-{stem}-as-loaded.png")  # with the frontend's dialogs (missing models)
    if page.evaluate("() => window.__edt.closeDialogs()"):
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
    _shot(browser, f"{server.label}-workflow-{stem}.png")
    apply_id = page.evaluate("() => window.__edt.firstOfType('ElasticDiTApply')")
    if apply_id is not None:
        page.evaluate("id => window.__edt.focus(id, 0.9)", apply_id)
        _shot(browser, f"{server.label}-workflow-{stem}-apply.png")

    name = os.path.basename(path)
    assert res["shownIsFile"], f"{name}: after the drop the canvas shows another graph: {[n['type'] for n in res['nodes']]}"
    json_types = {n["type"] for n in data["nodes"]}
    unregistered = sorted(t for t in json_types if not browser.page.evaluate("t => window.__edt.registered(t)", t))
    assert not unregistered, f"{name}: node types unknown to this ComfyUI: {unregistered}"
    expected, broken = _flagged_nodes(res)
    assert not broken, f"{name}: missing / broken nodes after loading (not explained by a missing model file): {broken}"
    if expected:
        print(f"[browser e2e] {name}: flagged for model files this server lacks (expected, no weights here): {expected}")
    dialogs = [d for d in res["dialogs"] if re.search(r"missing|not found", d, re.I) and "node" in d.lower()]
    assert not dialogs, f"{os.path.basename(path)}: the frontend reported missing nodes: {dialogs}"

    loaded = {str(n["id"]): n for n in res["nodes"]}  # live ids are strings from frontend 1.4x on
    checked = 0
    for n in data["nodes"]:
        if not n["type"].startswith("ElasticDiT"):
            continue
        saved = n.get("widgets_values")
        got = loaded[str(n["id"])]
        if isinstance(saved, dict):  # keyed form: compare by widget name
            values = {w["name"]: w["value"] for w in got["widgets"]}
            bad = {k: (v, values.get(k)) for k, v in saved.items() if not _same(v, values.get(k))}
        else:
            values = [w["value"] for w in got["widgets"]]
            bad = {got["widgets"][i]["name"] if i < len(values) else i: (v, values[i] if i < len(values) else "<none>")
                   for i, v in enumerate(saved or []) if i >= len(values) or not _same(v, values[i])}
            if len(values) != len(saved or []):
                bad["<count>"] = (len(saved or []), len(values))
        assert not bad, f"{os.path.basename(path)} node {n['id']} {n['type']}: widget (saved, loaded) differ: {bad}"
        assert _same(got["serialized"], saved) or isinstance(saved, dict), \
            f"{os.path.basename(path)} node {n['id']} {n['type']}: saving again gives {got['serialized']}, file has {saved}"
        checked += 1
    print(f"[browser e2e] {name}: {len(data['nodes'])} nodes, {checked} Elastic DiT nodes as saved")
    errs = _pack_errors(browser, since)
    assert not errs, f"{os.path.basename(path)}: console errors about the pack or a widget: {errs}"


def _flagged_nodes(res) -> tuple[list, list]:
    """(expected, broken) among the nodes of a loaded workflow.

    Expected: a registered node the frontend flags (has_errors: the red outline of frontend 1.4x and later)
    only because a combo widget names a model file this server does not have (no weights ship with the
    tests), and, where the frontend keeps a list of missing models, that list names this node and file.
    Broken: an unregistered node type, or one flagged for anything else."""
    listed = res["missingModels"]  # None on frontends without the list (1.35 and older flag nothing)
    expected, broken = [], []
    for n in res["nodes"]:
        files = {tuple(f) for f in n["missingFiles"]}
        mine = {(m["widget"], m["name"]) for m in listed or [] if m["node"] == n["id"]}
        if not n["registered"]:
            broken.append((n["id"], n["type"], "not registered"))
        elif n["has_errors"] and not files:
            broken.append((n["id"], n["type"], "flagged with errors, yet every file it names is here"))
        elif n["has_errors"] and listed is not None and not (mine and mine <= files):
            broken.append((n["id"], n["type"], f"flagged; the frontend's missing-model list says {sorted(mine)}, "
                                               f"its widgets name {sorted(files)}"))
        elif n["has_errors"]:
            expected.append((n["id"], n["type"], sorted(v for _, v in files)))
    return expected, broken


@pytest.fixture(scope="module")
def run(browser, server):
    """Build the graph in the UI, queue it from the page, wait (bounded) until it has run."""
    t0 = time.monotonic()
    page = browser.page
    since = len(browser.console)
    ids = page.evaluate("async o => window.__edt.buildGraph(o)", {"steps": STEPS, "cfg": CFG, "size": SIZE})
    page.evaluate("id => window.__edt.hookEvents(id)", ids["apply"])
    before = page.evaluate("id => window.__edt.widgetState(id)", ids["apply"])
    queued = page.evaluate("() => window.__edt.queue()")
    try:
        page.wait_for_function(
            "() => window.__edt.events().some(e => ['execution_success', 'execution_error', 'execution_interrupted']"
            ".includes(e.ev))", timeout=RUN_TIMEOUT_S * 1000)
    except Exception as e:
        _shot(browser, f"{server.label}-run-timeout.png")
        pytest.fail(f"the prompt did not finish within {RUN_TIMEOUT_S} s ({e}); queue returned {queued}; "
                    f"events {page.evaluate('() => window.__edt.events()')}; server log tail:\n{server.log()[-3000:]}")
    events = page.evaluate("() => window.__edt.events()")
    failed = [e for e in events if e["ev"] in ("execution_error", "execution_interrupted")]
    assert not failed, f"the prompt failed: {failed}\nserver log tail:\n{server.log()[-3000:]}"
    prompt_id = next(e["prompt_id"] for e in events if e["ev"] == "execution_start")
    deadline, hist = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        status, body = support.http(f"{server.url}/history/{prompt_id}")
        hist = json.loads(body).get(prompt_id) if status == 200 else None
        if hist and hist.get("status", {}).get("completed", hist.get("outputs")):
            break
        time.sleep(0.2)
    assert hist, f"/history/{prompt_id} has no entry after the run"
    page.wait_for_timeout(300)
    _t(f"graph built, queued and run ({STEPS} steps, prompt {prompt_id})", t0)
    return dict(ids=ids, events=events, prompt_id=prompt_id, history=hist, before=before, since=since,
                state=page.evaluate("id => window.__edt.widgetState(id)", ids["apply"]))


def test_fresh_apply_node_fits_its_heatmap(run, browser):
    """A freshly added Apply node must be tall enough for its heatmap widget (nothing drawn outside it)."""
    ids = run["ids"]
    lay = browser.page.evaluate("id => window.__edt.layout(id)", ids["apply"])
    print(f"[browser e2e] Apply node: size at creation {ids['applySizeAtCreation']}, computeSize then "
          f"{ids['applyComputedSize']}, now {lay['nodeSize']} (computeSize {lay['computedSize']}); widget {lay['widget']}; "
          f"node body {lay['body']}")
    assert lay["widget"] and lay["widget"]["height"] > 100, f"the heatmap widget is not laid out: {lay}"
    over = (lay["widget"]["bottom"] - lay["body"]["bottom"]) / lay["scale"]  # in canvas units (zoom 1 pixels)
    assert over <= 1, (f"the heatmap widget reaches {over:.0f} px (at zoom 1) below the Apply node's body (node "
                       f"{lay['nodeSize']}, widget {lay['widget']['height'] / lay['scale']:.0f} px tall): it overlaps "
                       "what lies under the node")


def test_live_events_reached_the_widget(run):
    ev = [e for e in run["events"] if e["ev"].startswith("elastic_dit.")]
    names = [e["ev"] for e in ev]
    apply_id = str(run["ids"]["apply"])
    assert names.count("elastic_dit.start") == 1 and names.count("elastic_dit.done") == 1, names
    steps = [e for e in ev if e["ev"] == "elastic_dit.step"]
    assert len(steps) == STEPS, f"{len(steps)} step events for {STEPS} steps: {names}"
    assert [e["step"] for e in steps] == list(range(STEPS))
    assert all(str(e["node"]).split(":")[-1] == apply_id for e in ev), f"events not addressed to node {apply_id}: {ev}"
    assert names[0] == "elastic_dit.start" and names[-1] == "elastic_dit.done"
    # the live fill: after step k the widget shows k + 1 columns of one view, and says so
    assert all(e["live"] for e in steps), steps
    assert [e["cells"] for e in steps] == [N_BLOCKS * (k + 1) for k in range(STEPS)], [e["cells"] for e in steps]
    assert all(e["summary"].startswith(f"sampling… step {k + 1}/{STEPS}") for k, e in enumerate(steps)), \
        [e["summary"] for e in steps]
    done = ev[-1]
    assert not done["live"] and done["cells"] == N_BLOCKS * STEPS


def test_heatmap_shows_the_finished_run(run, browser):
    st = run["state"]
    assert run["before"]["hasState"] and run["before"]["cells"] in (None, "0") and run["before"]["payload"] is None
    pl = st["payload"]
    assert pl and not pl["live"] and pl["hasCosts"], st
    assert pl["blocks"] == N_BLOCKS and pl["steps"] == STEPS, pl
    assert st["cells"] == str(N_BLOCKS * STEPS), f"canvas.dataset.cells = {st['cells']}, want {N_BLOCKS}x{STEPS}"
    assert st["estimate"] == "0"
    px = st["pixels"]  # drawn in device pixels: dpr x canvas zoom (when zoomed in), never blurred up by the browser
    want = px["dpr"] * max(px["zoom"] or 1, 1)
    assert px["scale"] == pytest.approx(want), px
    assert abs(px["width"] - round(px["cssWidth"] * want)) <= 1 and abs(px["height"] - round(px["cssHeight"] * want)) <= 1, px
    assert "skipped" in st["summary"] and not st["summary"].startswith("what-if"), st["summary"]
    assert {(v["stream"], v["sample"]) for v in pl["views"]} == {("cond", 0), ("uncond", 0)}, pl["views"]
    for v in pl["views"]:  # the routers forced skip, reuse and reduced width: all three show
        assert v["actions"] == [0, 1, 2], v
        assert min(w for w in v["widths"] if w is not None) < 1.0, v
    assert pl["config"]["tau"] == 0.5 and pl["config"]["max_reuse"] == 10
    assert not _pack_errors(browser, run["since"]), _pack_errors(browser, run["since"])


def test_view_selector_labels_match_the_views(run):
    """Option i of the view <select> must name payload view i (the one drawn when it is chosen)."""
    st = run["state"]
    views = [f"{v['stream']} · sample {v['sample']}" for v in st["payload"]["views"]]
    labels = [o["text"] for o in st["options"]]
    assert labels == views, (f"the view selector's options {labels} do not match the payload's views {views}: "
                             f"the selected option ({st['selected']}) says "
                             f"{labels[int(st['selected'])] if st['selected'] else None!r} while view {st['view']} "
                             f"({views[st['view']]}) is drawn")


def test_knobs_are_sliders_and_what_if_recolours(run, browser, server):
    page, apply_id = browser.page, run["ids"]["apply"]
    since = len(browser.console)
    st = page.evaluate("id => window.__edt.widgetState(id)", apply_id)
    knobs = {k["name"]: k for k in st["knobs"] if k}
    assert set(knobs) == {"tau", "delta", "max_reuse"}, st["knobs"]
    for k in knobs.values():  # `display: "slider"` -> the frontend's slider widget
        assert k["type"] == "slider", f"{k['name']} is a {k['type']!r} widget, not a slider: {k}"
        assert k["callback"] == "function"
    assert (knobs["tau"]["options"]["min"], knobs["tau"]["options"]["max"]) == (0, 1)
    recorded = st["payload"]["config"]
    try:
        base_summary = st["summary"]
        skipped = lambda s: int(re.search(r"skipped (\d+)%", s).group(1))  # noqa: E731

        est = page.evaluate("([id, v]) => window.__edt.setKnob(id, 'tau', v)", [apply_id, 0.75])
        assert est["estimate"] == "1", est
        assert est["summary"].startswith("what-if estimate: "), est["summary"]
        assert skipped(est["summary"]) != skipped(base_summary), (est["summary"], base_summary)
        assert skipped(est["summary"]) > skipped(base_summary)  # a higher threshold skips more
        assert est["cells"] == str(N_BLOCKS * STEPS)
        _shot(browser, f"{server.label}-widget-whatif-full.png")
        layout = page.evaluate("id => window.__edt.focus(id, 0.9)", apply_id)
        _shot(browser, f"{server.label}-widget-whatif.png")
        print(f"[browser e2e] what-if at tau 0.75: {est['summary']!r}; zoomed layout {layout}")

        back = page.evaluate("([id, v]) => window.__edt.setKnob(id, 'tau', v)", [apply_id, recorded["tau"]])
        assert back["estimate"] == "0" and back["summary"] == base_summary, (back["summary"], base_summary)

        no_reuse = page.evaluate("([id, v]) => window.__edt.setKnob(id, 'max_reuse', v)", [apply_id, 0])
        assert no_reuse["estimate"] == "1" and "reused 0%" in no_reuse["summary"], no_reuse["summary"]
        back = page.evaluate("([id, v]) => window.__edt.setKnob(id, 'max_reuse', v)", [apply_id, recorded["max_reuse"]])
        assert back["estimate"] == "0" and back["summary"] == base_summary

        wide = page.evaluate("([id, v]) => window.__edt.setKnob(id, 'delta', v)", [apply_id, 0.3])
        assert wide["estimate"] == "1" and wide["summary"].startswith("what-if estimate: ")
        back = page.evaluate("([id, v]) => window.__edt.setKnob(id, 'delta', v)", [apply_id, recorded["delta"]])
        assert back["estimate"] == "0" and back["summary"] == base_summary, (back["summary"], base_summary)

        # The same with the mouse, as a user does it: drag the tau slider from its value to 3/4, then a click at
        # 1/4. Both go through the frontend's own slider code, which must reach the pack's callback.
        page.evaluate("id => window.__edt.focus(id, 0.9)", apply_id)
        dragged = _drag_knob(page, apply_id, "tau", recorded["tau"], 0.75)
        tau = _knob(dragged, "tau")
        assert abs(tau - 0.75) < 0.03, f"dragging the tau slider from {recorded['tau']} to 3/4 set tau to {tau}"
        assert dragged["estimate"] == "1" and dragged["summary"].startswith("what-if estimate: "), dragged["summary"]
        assert skipped(dragged["summary"]) > skipped(base_summary), (dragged["summary"], base_summary)
        _shot(browser, f"{server.label}-widget-dragged.png")
        pt = page.evaluate("([id, f]) => window.__edt.widgetPoint(id, 'tau', f)", [apply_id, 0.25])
        page.mouse.click(pt["x"], pt["y"])
        page.wait_for_timeout(200)
        clicked = page.evaluate("id => window.__edt.widgetState(id)", apply_id)
        tau = _knob(clicked, "tau")
        assert abs(tau - 0.25) < 0.03, f"a click at 1/4 of the tau slider set tau to {tau}"
        assert clicked["estimate"] == "1" and skipped(clicked["summary"]) < skipped(base_summary), clicked["summary"]
        print(f"[browser e2e] mouse: drag to 3/4 -> tau {_knob(dragged, 'tau'):.3f} ({dragged['summary']!r}); "
              f"click at 1/4 -> tau {tau:.3f} ({clicked['summary']!r})")
        back = page.evaluate("([id, v]) => window.__edt.setKnob(id, 'tau', v)", [apply_id, recorded["tau"]])
        assert back["estimate"] == "0" and back["summary"] == base_summary
        errs = _pack_errors(browser, since)
        assert not errs, f"console errors about the pack or a widget while moving the knobs: {errs}"
    finally:  # later tests expect the recorded knob values
        page.evaluate("([id, v]) => window.__edt.restoreKnobs(id, v)",
                      [apply_id, {k: recorded[k] for k in ("tau", "delta", "max_reuse")}])


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


def test_stats_node_preview_image(run, server):
    out = run["history"]["outputs"].get(str(run["ids"]["preview"]))
    assert out and out.get("images"), f"the Preview Image node has no image in /history: {run['history']['outputs']}"
    img = out["images"][0]
    q = "&".join(f"{k}={img[k]}" for k in ("filename", "subfolder", "type"))
    status, data = support.http(f"{server.url}/view?{q}")
    assert status == 200, f"/view?{q} answered {status}"
    w, h = support.png_size(data)
    # 150 px of labels + 2x-scaled cells per step, a header and one 2x row per block
    assert 150 + 2 * STEPS <= w <= 4096 and 34 + 2 * N_BLOCKS <= h <= 4096, (w, h)
    assert len(data) > 500, len(data)


def test_saved_workflow_carries_no_heatmap(run, browser):
    s = browser.page.evaluate("id => window.__edt.serialized(id)", run["ids"]["apply"])
    vals = s["apply"]["widgets_values"]
    assert isinstance(vals, list) and len(vals) == len(APPLY_WIDGETS), f"Apply node saves {vals}"
    assert vals[:3] == [0.5, 0.015, 10] and vals[8:] == ["sliders", "auto"], vals
    assert not any(isinstance(v, (dict, list)) for v in vals), vals
    named = s["apply"].get("widgets_values_named")  # frontend 1.4x and later also save the values by name
    if named is not None:
        assert set(named) == set(APPLY_WIDGETS), f"the Apply node saves the named values {sorted(named)}"
        assert [named[k] for k in APPLY_WIDGETS] == vals, (named, vals)
    assert s["applyBytes"] < 4000, f"the Apply node takes {s['applyBytes']} bytes in the saved workflow"
    assert s["bytes"] < 50_000, f"the saved workflow takes {s['bytes']} bytes"
    assert "elastic_heatmap" not in s["applyApiInputs"] and set(APPLY_WIDGETS) <= set(s["applyApiInputs"]), \
        s["applyApiInputs"]
    print(f"[browser e2e] saved workflow {s['bytes']} bytes, Apply node {s['applyBytes']} bytes")


def test_screenshot_of_the_finished_run(run, browser, server):
    page, apply_id = browser.page, run["ids"]["apply"]
    st = page.evaluate("id => window.__edt.widgetState(id)", apply_id)
    assert st["estimate"] == "0" and st["cells"] == str(N_BLOCKS * STEPS)
    page.mouse.move(support.VIEWPORT["width"] - 8, support.VIEWPORT["height"] // 2)  # no hover tooltip in the picture
    page.evaluate("() => window.__edt.fitAll()")
    full = _shot(browser, f"{server.label}-graph.png")
    lay = page.evaluate("id => window.__edt.focus(id, 0.9)", apply_id)
    path = _shot(browser, f"{server.label}-widget.png")
    if os.environ.get("ELASTIC_DIT_UPDATE_DOCS") and not server.frontend:  # only when asked; the pinned frontend
        docs = os.path.join(support.REPO_ROOT, "docs")
        os.makedirs(docs, exist_ok=True)
        shutil.copyfile(path, os.path.join(docs, f"widget-{server.version}.png"))
    print(f"[browser e2e] screenshots: {path}, {full}; layout {lay}")
    assert not _pack_errors(browser), _pack_errors(browser)
    w = lay["widget"]
    assert w and w["width"] * 1 >= 300 and w["height"] >= 300, f"the widget is too small to read when zoomed: {lay}"
    assert 0 <= w["left"] and w["right"] <= support.VIEWPORT["width"] and 0 <= w["top"] \
        and w["bottom"] <= support.VIEWPORT["height"], f"the widget is not fully in view: {lay}"


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
        _shot(browser, f"{server.label}-widget-nodes2.png")
        assert _knob(st, "tau") > recorded["tau"], f"dragging the Nodes 2.0 tau slider right left tau at {_knob(st, 'tau')}"
        assert st["estimate"] == "1" and st["summary"].startswith("what-if estimate: "), st["summary"]
        assert st["cells"] == str(N_BLOCKS * STEPS), st
        print(f"[browser e2e] Nodes 2.0 on frontend {fe}: tau dragged to {_knob(st, 'tau')}: {st['summary']!r}")
    finally:
        page.evaluate("() => window.__edt.setNodes2(false)")
        page.evaluate("([id, v]) => window.__edt.restoreKnobs(id, v)",
                      [apply_id, {k: recorded[k] for k in ("tau", "delta", "max_reuse")}])


def test_no_deprecated_api_warnings_from_the_pack(run, browser):
    """Nothing the pack's JS calls makes the frontend warn (deprecations included), over everything the tests
    did: the page load, workflow drops, the live run, the knobs. Attributed by the pack's files on the stack."""
    got = browser.page.evaluate("() => window.__edt.fromPack()")
    assert not got, f"console warnings / errors raised from the pack's code: {got}"
