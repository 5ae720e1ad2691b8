"""Pictures with Pillow: text at any size, anti-aliased, and PNG files. Pillow is one of ComfyUI's own
requirements, so the stats node, the demo, the benchmark plot and the workflow thumbnails need nothing
new inside ComfyUI (it replaced a hand-written PNG writer and a 5x7 capitals-only bitmap font)."""
from __future__ import annotations

import numpy as np


def font(size: int):
    """Pillow's built-in font at `size` pixels (a scalable one from Pillow 10.1 with FreeType; before that,
    or without FreeType, its fixed bitmap font, which still draws every character)."""
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def text_width(draw, s: str, f) -> float:
    return draw.textlength(s, font=f)


def fit(draw, s: str, f, max_w: float, keep: str = "end") -> str:
    """`s`, shortened with an ellipsis until it is at most max_w pixels wide; keep="end" keeps its tail
    (block names differ at the end: ...double_blocks.12)."""
    if text_width(draw, s, f) <= max_w:
        return s
    for n in range(len(s) - 1, 0, -1):
        t = "..." + s[-n:] if keep == "end" else s[:n] + "..."
        if text_width(draw, t, f) <= max_w:
            return t
    return ""


def wrap(draw, s: str, f, max_w: float, max_lines: int) -> list[str]:
    """Words of `s` in lines of at most max_w pixels; the last line allowed ends in an ellipsis when cut."""
    lines: list[str] = []
    for word in s.split():
        if lines and text_width(draw, lines[-1] + " " + word, f) <= max_w:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [fit(draw, " ".join(lines[max_lines - 1:]), f, max_w, keep="start")]
    return [fit(draw, ln, f, max_w, keep="start") for ln in lines]


def to_array(img) -> np.ndarray:
    """A Pillow image -> uint8 [H, W, 3]."""
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def save_png(path: str, rgb: np.ndarray) -> None:
    """rgb: uint8 [H, W, 3]."""
    from PIL import Image
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").save(path, format="PNG")
