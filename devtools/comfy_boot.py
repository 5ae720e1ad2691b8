"""Find and boot a REAL ComfyUI (for tests and benchmarks), and load this pack into it as ComfyUI does.

Where to look: $COMFYUI_PATH, the ComfyUI whose custom_nodes/ holds this pack, ~/comfy/ComfyUI.
"""
from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_MODULE = "comfyui_elastic_dit"
_PACK = None


def find_comfyui() -> tuple[str | None, str]:
    """(path, how it was found) or (None, why none was found)."""
    tried = []
    env = os.environ.get("COMFYUI_PATH")
    candidates = []
    if env:
        candidates.append((env, "COMFYUI_PATH"))
    candidates.append((os.path.dirname(os.path.dirname(PACK_ROOT)), "the ComfyUI holding this pack"))
    candidates.append((os.path.expanduser("~/comfy/ComfyUI"), "~/comfy/ComfyUI"))
    for path, how in candidates:
        tried.append(f"{how} ({path})")
        if os.path.isfile(os.path.join(path, "comfy", "model_patcher.py")):
            return os.path.realpath(path), how
    return None, "no real ComfyUI found; looked at " + ", ".join(tried) + ". Set COMFYUI_PATH to a ComfyUI checkout."


def boot(path: str):
    """Import ComfyUI on the CPU and load this pack as a custom node. Returns (nodes module, pack module)."""
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args
    args.cpu = True  # before comfy.model_management is imported
    import comfy.model_management  # noqa: F401
    import nodes  # ComfyUI's nodes.py
    global _PACK
    if _PACK is None:
        holder = tempfile.mkdtemp(prefix="elastic-dit-custom-nodes-")
        link = os.path.join(holder, PACK_MODULE)
        os.symlink(PACK_ROOT, link)
        ok = asyncio.run(nodes.load_custom_node(link))
        # ComfyUI names a directory module after its path ("." -> "_x_"); older builds by its base name
        _PACK = sys.modules.get(link.replace(".", "_x_")) or sys.modules.get(PACK_MODULE)
        if not ok or _PACK is None:
            raise RuntimeError(f"ComfyUI at {path} failed to import the pack (see the log above)")
    return nodes, _PACK


def version(path: str) -> str:
    with open(os.path.join(path, "comfyui_version.py")) as f:
        m = re.search(r'__version__\s*=\s*"([^"]+)"', f.read())
    return m.group(1) if m else "unknown"
