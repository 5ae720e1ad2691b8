"""Browser end-to-end tests: a real ComfyUI server with this pack, driven in headless Chromium.

The server, the browser page and the graph run are made once per session and shared by the test modules:
test_widget_e2e.py (server, workflows, the run, the heatmap, saving) runs first, test_widget_knobs.py
(the sliders and the what-if, Nodes 2.0, warnings from the pack's code over the whole session) after it.
"""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

from devtools.comfy_boot import find_comfyui
from tests.browser import support
from tests.browser.helper_nodes import TINY
from tests.browser.support import skip_reason

STEPS, CFG, SIZE = 5, 3.5, 128  # 128 px -> a 16x16, 16-channel SD3/Flux latent, what the tiny Flux takes
N_BLOCKS = TINY["depth"] + TINY["single"]
RUN_TIMEOUT_S = 120
PAGE_JS = os.path.join(support.HERE, "page.js")


def pytest_report_header(config):
    why = skip_reason()
    return f"browser tests: SKIPPED - {why}" if why else "browser tests: " + skip_reason.found


def _t(label, t0):
    print(f"[browser e2e] {label}: {time.monotonic() - t0:.1f} s", flush=True)


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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
        support.shot(browser, f"{server.label}-run-timeout.png")
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
