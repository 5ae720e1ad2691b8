"""End to end, in a browser: a REAL ComfyUI server with this pack, its real frontend in headless Chromium.

1. The server starts with the pack and the test-only helper pack (tests/browser/helper_nodes) as custom
   nodes; neither fails to import.
2. Every workflows/*.json loads as a dropped file does, with no missing node and with the Elastic DiT
   nodes' widget values exactly as saved.
3. A graph built in the UI (tiny random-weight Flux -> Apply Elastic DiT <- test routers; KSampler;
   Elastic DiT Stats -> Preview Image) is queued from the page; the heatmap widget fills in live, then
   shows the finished run (the knobs and the what-if: test_widget_knobs.py).
4. The saved workflow carries none of the heatmap data; a screenshot of the widget is kept.

Skipped, with the reason, where ComfyUI, Chromium or the Python package `playwright` is missing.
Run: python -m pytest tests/browser -q -rs -s   (COMFYUI_PATH=... picks the ComfyUI; ELASTIC_DIT_FRONTEND_ROOT=...
a frontend other than the one it pins). The server, page and run are fixtures of conftest.py, one per session.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil

import pytest

from tests.browser import support

REASON = support.skip_reason()
if REASON is not None:
    pytest.skip(f"browser test: {REASON}", allow_module_level=True)

from tests.browser.conftest import N_BLOCKS, STEPS  # noqa: E402

WORKFLOWS = sorted(glob.glob(os.path.join(support.REPO_ROOT, "workflows", "*.json")))
APPLY_WIDGETS = ["tau", "delta", "max_reuse", "skip_blocks", "adapt_width", "cache", "cache_start_percent",
                 "cache_end_percent", "preset", "cache_device", "cache_budget", "authors_activation"]


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=0, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


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


def test_template_browser_lists_the_workflows_with_thumbnails(server):
    status, body = support.http(server.url + "/workflow_templates")
    assert status == 200
    names = sorted(json.loads(body).get(support.PACK_LINK, []))
    shipped = sorted(os.path.splitext(os.path.basename(p))[0] for p in WORKFLOWS)
    assert names == shipped, f"the template browser lists {names}, the pack ships {shipped}"
    for name in names:
        status, jpg = support.http(server.url + f"/api/workflow_templates/{support.PACK_LINK}/{name}.jpg")
        assert status == 200 and jpg[:3] == b"\xff\xd8\xff", f"no thumbnail served for {name} ({status})"


def test_page_loads_the_extension_cleanly(browser):
    assert browser.page.evaluate("() => window.__edt.ready()"), "the Elastic DiT extension is not registered in the page"
    errs = support.pack_errors(browser)
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
    name = os.path.basename(path)
    json_types = {n["type"] for n in data["nodes"]}
    unregistered = sorted(t for t in json_types if not browser.page.evaluate("t => window.__edt.registered(t)", t))
    needs = data.get("extra", {}).get("elastic_dit", {}).get("model_class")
    if unregistered and needs:  # checked before the drop: the frontend would ask the registry for the missing nodes
        pytest.skip(f"{name} needs ComfyUI's {needs}; this ComfyUI lacks it (unknown node types {unregistered})")
    since = len(browser.console)
    page, stem = browser.page, os.path.splitext(os.path.basename(path))[0]
    res = page.evaluate("([t, n]) => window.__edt.loadWorkflow(t, n)", [text, os.path.basename(path)])
    support.shot(browser, f"{server.label}-workflow-{stem}-as-loaded.png")  # with the frontend's dialogs (missing models)
    if page.evaluate("() => window.__edt.closeDialogs()"):
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
    support.shot(browser, f"{server.label}-workflow-{stem}.png")
    apply_id = page.evaluate("() => window.__edt.firstOfType('ElasticDiTApply')")
    if apply_id is not None:
        page.evaluate("id => window.__edt.focus(id, 0.9)", apply_id)
        support.shot(browser, f"{server.label}-workflow-{stem}-apply.png")

    assert res["shownIsFile"], f"{name}: after the drop the canvas shows another graph: {[n['type'] for n in res['nodes']]}"
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
    errs = support.pack_errors(browser, since)
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
    assert not support.pack_errors(browser, run["since"]), support.pack_errors(browser, run["since"])


def test_view_selector_labels_match_the_views(run):
    """Option i of the view <select> must name payload view i (the one drawn when it is chosen)."""
    st = run["state"]
    views = [f"{v['stream']} #{v['sample']}" for v in st["payload"]["views"]]
    labels = [o["text"] for o in st["options"]]
    assert labels == views, (f"the view selector's options {labels} do not match the payload's views {views}: "
                             f"the selected option ({st['selected']}) says "
                             f"{labels[int(st['selected'])] if st['selected'] else None!r} while view {st['view']} "
                             f"({views[st['view']]}) is drawn")
    fit = st["selectFit"]
    assert fit["box"] >= fit["text"] + 12, f"the view selector ({fit['box']} px) clips its labels ({fit['text']:.0f} px)"


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
    assert vals[:3] == [0.5, 0.015, 10] and vals[8:] == ["sliders", "auto", 1.0, True], vals
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
    full = support.shot(browser, f"{server.label}-graph.png")
    lay = page.evaluate("id => window.__edt.focus(id, 0.9)", apply_id)
    path = support.shot(browser, f"{server.label}-widget.png")
    if os.environ.get("ELASTIC_DIT_UPDATE_DOCS") and not server.frontend:  # only when asked; the pinned frontend
        docs = os.path.join(support.REPO_ROOT, "docs")
        os.makedirs(docs, exist_ok=True)
        shutil.copyfile(path, os.path.join(docs, f"widget-{server.version}.png"))
    print(f"[browser e2e] screenshots: {path}, {full}; layout {lay}")
    assert not support.pack_errors(browser), support.pack_errors(browser)
    w = lay["widget"]
    assert w and w["width"] * 1 >= 300 and w["height"] >= 300, f"the widget is too small to read when zoomed: {lay}"
    assert 0 <= w["left"] and w["right"] <= support.VIEWPORT["width"] and 0 <= w["top"] \
        and w["bottom"] <= support.VIEWPORT["height"], f"the widget is not fully in view: {lay}"


