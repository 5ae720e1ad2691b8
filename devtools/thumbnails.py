"""Make the template browser's thumbnails: workflows/<name>.jpg for every workflows/<name>.json.

ComfyUI's template browser shows `<pack>/workflows/<name>.json` with the picture `<name>.jpg` beside it.
Each thumbnail is the workflow's title over the heatmap of a real elastic run (the built-in toy model
with its shipped routers): what the Apply node's widget shows after a run.

    python devtools/thumbnails.py          (needs Pillow for JPEG; ComfyUI's Python has it)
"""
from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from elastic_core import font, heatmap  # noqa: E402
from elastic_core.toy.demo import demo_record  # noqa: E402

SIZE = (400, 300)  # width, height


def title_of(path: str) -> str:
    """The workflow's first Note line, else its file name."""
    with open(path) as f:
        wf = json.load(f)
    for node in wf.get("nodes", []):
        if node.get("type") == "Note" and node.get("widgets_values"):
            line = str(node["widgets_values"][0]).strip().splitlines()[0]
            return line.lstrip("# ").strip()
    return os.path.splitext(os.path.basename(path))[0].replace("-", " ")


def thumbnail(title: str, pic: np.ndarray) -> np.ndarray:
    w, h = SIZE
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = (21, 21, 21)
    words, lines = title.split(), [""]
    for word in words:  # wrap to the width, two lines at most
        if font.text_width((lines[-1] + " " + word).strip()) * 2 > w - 16 and lines[-1]:
            lines.append("")
        lines[-1] = (lines[-1] + " " + word).strip()
    head = np.zeros((2 * (font.H + 3), w // 2, 3), dtype=np.uint8) + 21
    for i, line in enumerate(lines[:2]):
        font.draw_text(head, 4, 2 + i * (font.H + 3), line, (230, 230, 230))
    head = head.repeat(2, 0).repeat(2, 1)
    img[:head.shape[0], :head.shape[1]] = head
    top = head.shape[0] + 4
    crop = pic[: h - top, : w]
    img[top:top + crop.shape[0], :crop.shape[1]] = crop
    return img


def main() -> int:
    from PIL import Image
    pic = heatmap.picture(heatmap.payload(demo_record()), 0, scale=1)
    for path in sorted(glob.glob(os.path.join(ROOT, "workflows", "*.json"))):
        out = os.path.splitext(path)[0] + ".jpg"
        Image.fromarray(thumbnail(title_of(path), pic)).save(out, quality=85)
        print(f"wrote {os.path.relpath(out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
