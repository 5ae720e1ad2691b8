"""Plumbing for the browser end-to-end test: find ComfyUI, Chromium and Playwright; run a REAL ComfyUI
server with this pack (and the test-only helper pack) as custom nodes; drive headless Chromium.

Nothing here modifies the ComfyUI checkout when it supports `--base-directory` (v0.3.64 and v0.8.0 do):
the server gets a temporary base directory whose custom_nodes/ holds symlinks to this repository and
to tests/browser/helper_nodes, and whose user/, input/, output/ and temp/ vanish with it.
Every wait is bounded; the browser may talk to nothing but the server on 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np

from devtools.comfy_boot import find_comfyui, version

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
HELPER_PACK = os.path.join(HERE, "helper_nodes")
ARTIFACTS = os.path.join(HERE, "artifacts")
PACK_LINK = "comfyui-elastic-dit"
HELPER_LINK = "elastic-dit-test-nodes"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
SERVER_START_S = 120
VIEWPORT = {"width": 1600, "height": 1000}
FRONTEND_ENV = "ELASTIC_DIT_FRONTEND_ROOT"


def frontend_override() -> tuple[str, str] | None:
    """(static folder, version) of the frontend named by $ELASTIC_DIT_FRONTEND_ROOT, or None: the ComfyUI's own.

    The variable names the frontend's static folder (the one holding index.html), or a folder a
    `comfyui-frontend-package` wheel was unpacked into (`comfyui_frontend_package/static` inside it; its
    `.dist-info` gives the version). A value that is neither is an error, not a silent fallback."""
    root = os.environ.get(FRONTEND_ENV)
    if not root:
        return None
    root = os.path.abspath(os.path.expanduser(root))
    for static in (root, os.path.join(root, "comfyui_frontend_package", "static")):
        if os.path.isfile(os.path.join(static, "index.html")):
            break
    else:
        raise RuntimeError(f"${FRONTEND_ENV}={root}: no index.html there nor in comfyui_frontend_package/static under "
                           "it; point it at a frontend's static folder or at an unpacked comfyui-frontend-package wheel")
    holder = os.path.dirname(os.path.dirname(static))
    infos = glob.glob(os.path.join(holder, "comfyui_frontend_package-*.dist-info"))
    ver = os.path.basename(infos[0])[len("comfyui_frontend_package-"):-len(".dist-info")] if infos else "custom"
    return static, ver


def chromium_path() -> str | None:
    for c in (os.environ.get("ELASTIC_DIT_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
              "/usr/bin/chromium", shutil.which("google-chrome")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def skip_reason() -> str | None:
    """Why the browser test cannot run here (None: it can). Sets skip_reason.found to what was found."""
    comfy, how = find_comfyui()
    if importlib.util.find_spec("playwright") is None:
        return (f"the Python package `playwright` is not installed in this Python ({sys.executable}); "
                "`pip install playwright` (never `playwright install`: the test drives the system Chromium)")
    chromium = chromium_path()
    if chromium is None:
        return "no Chromium found (looked at $ELASTIC_DIT_CHROMIUM, chromium, chromium-browser, /usr/bin/chromium); " \
               "install Debian's `chromium` package"
    if comfy is None:
        return how
    fe = frontend_override()
    frontend = f"frontend {fe[1]} from ${FRONTEND_ENV} ({fe[0]})" if fe else "the frontend it pins"
    skip_reason.found = f"ComfyUI {version(comfy)} at {comfy} (found via {how}), {frontend}; Chromium {chromium}"
    return None


skip_reason.found = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data=None, timeout: float = 10.0) -> tuple[int, bytes]:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _die_with_parent():
    """Runs in the server's child process: it gets SIGTERM when pytest dies, even by SIGKILL (Linux)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class ComfyServer:
    """`python main.py --cpu --listen 127.0.0.1 --port N` of a real ComfyUI, with this pack installed."""

    def __init__(self, comfy_dir: str):
        self.comfy_dir = comfy_dir
        self.version = version(comfy_dir)
        self.frontend = frontend_override()  # (static folder, version) or None: the one ComfyUI pins
        # names screenshots: "0.33.0", or "0.33.0-fe1.58.1" on a frontend other than the pinned one
        self.label = self.version + (f"-fe{self.frontend[1]}" if self.frontend else "")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = tempfile.mkdtemp(prefix="elastic-dit-browser-")
        self.log_path = os.path.join(self.base, "server.log")
        self.proc: subprocess.Popen | None = None
        self.links: list[str] = []  # symlinks made inside the ComfyUI checkout (fallback only), removed on stop

    def _example_input(self) -> None:
        """The image the image-to-3D workflow's Load Image names (input/example.png), as a user has it."""
        from elastic_core.draw import save_png
        os.makedirs(os.path.join(self.base, "input"), exist_ok=True)
        save_png(os.path.join(self.base, "input", "example.png"), np.full((64, 64, 3), 200, dtype=np.uint8))

    def _flags(self) -> list[str]:
        self._example_input()
        with open(os.path.join(self.comfy_dir, "comfy", "cli_args.py")) as f:
            cli = f.read()
        flags = []
        if self.frontend:
            flags += ["--front-end-root", self.frontend[0]]
        if "--disable-auto-launch" in cli:
            flags.append("--disable-auto-launch")
        if "--base-directory" in cli:
            nodes_dir = os.path.join(self.base, "custom_nodes")
            os.makedirs(nodes_dir)
            os.symlink(REPO_ROOT, os.path.join(nodes_dir, PACK_LINK))
            os.symlink(HELPER_PACK, os.path.join(nodes_dir, HELPER_LINK))
            flags += ["--base-directory", self.base]
        else:  # older ComfyUI: link both packs into its own custom_nodes/ for the test's duration
            for target, name in ((REPO_ROOT, PACK_LINK), (HELPER_PACK, HELPER_LINK)):
                link = os.path.join(self.comfy_dir, "custom_nodes", name)
                if os.path.lexists(link):
                    raise RuntimeError(f"{link} already exists; the test will not replace it")
                os.symlink(target, link)
                self.links.append(link)
            flags += ["--output-directory", os.path.join(self.base, "output"),
                      "--temp-directory", os.path.join(self.base, "temp"),
                      "--input-directory", os.path.join(self.base, "input")]
        return flags

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start(self) -> "ComfyServer":
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), *self._flags()]
        self.cmd = cmd
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
        self._logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._logf, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        t0, deadline = time.monotonic(), time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerDied(self.proc.returncode, self.log())
            with contextlib.suppress(OSError):
                if http(self.url + "/", timeout=2)[0] == 200:
                    self.start_s = time.monotonic() - t0
                    return self
            time.sleep(0.3)
        raise TimeoutError(f"ComfyUI did not answer HTTP 200 within {SERVER_START_S} s; log tail:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_logf", None):
            self._logf.close()
        for link in self.links:
            with contextlib.suppress(OSError):
                os.unlink(link)
        for name in (PACK_LINK, HELPER_LINK):  # unlink first: rmtree must never walk into the repository
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.base, "custom_nodes", name))
        shutil.rmtree(self.base, ignore_errors=True)

    def import_failures(self) -> list[str]:
        """`IMPORT FAILED` lines of the log that name this pack or the helper pack (other packs' are fine)."""
        return [ln for ln in self.log().splitlines()
                if "IMPORT FAILED" in ln and (PACK_LINK in ln or HELPER_LINK in ln)]


class ServerDied(RuntimeError):
    def __init__(self, rc, log):
        self.rc, self.log = rc, log
        missing = [ln.strip() for ln in log.splitlines() if "ModuleNotFoundError" in ln or ln.startswith("ImportError")]
        self.missing_module = missing[-1] if missing else None  # the last: what stopped it
        super().__init__(f"ComfyUI exited with code {rc} before serving; log tail:\n{log[-4000:]}")


class Browser:
    """Headless Chromium through Playwright, with a fresh profile; requests leaving 127.0.0.1:port are aborted."""

    def __init__(self, base_url: str, executable: str):
        from playwright.sync_api import sync_playwright
        self.base_url = base_url
        self.profile = tempfile.mkdtemp(prefix="elastic-dit-chromium-")
        self.pw = sync_playwright().start()
        try:
            self.ctx = self.pw.chromium.launch_persistent_context(
                self.profile, executable_path=executable, args=CHROMIUM_FLAGS, headless=True, viewport=VIEWPORT,
                timeout=60_000)
        except Exception:
            self.pw.stop()
            raise
        self.blocked: list[str] = []
        self.console: list[dict] = []  # console errors/warnings and uncaught page errors, in order
        self.ctx.route("**/*", self._route)
        self.page = self.ctx.new_page()
        self.page.set_default_timeout(30_000)
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda e: self.console.append(
            {"type": "pageerror", "text": str(e), "url": "", "stack": getattr(e, "stack", "") or ""}))

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.base_url + "/") or url == self.base_url or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def _on_console(self, msg):
        if msg.type in ("error", "warning", "assert"):
            loc = msg.location or {}
            self.console.append({"type": msg.type, "text": msg.text, "url": loc.get("url", ""), "stack": ""})

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ctx.close()
        with contextlib.suppress(Exception):
            self.pw.stop()
        shutil.rmtree(self.profile, ignore_errors=True)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"not a PNG (starts with {data[:8]!r})"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def pack_errors(b: Browser, since: int = 0) -> list[dict]:
    """Console errors and page errors that concern this pack or a widget."""
    pat = re.compile(r"elastic|widget", re.I)
    return [m for m in b.console[since:] if m["type"] in ("error", "pageerror", "assert")
            and (pat.search(m["text"]) or pat.search(m["url"]) or pat.search(m["stack"]))]


def shot(b: Browser, name: str) -> str:
    """A screenshot of the page, kept under tests/browser/artifacts/ (not committed)."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    b.page.screenshot(path=path)
    return path
