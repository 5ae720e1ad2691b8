"""The toy benchmark's figure, drawn with numpy and the engine's bitmap font (no plotting library):
two panels, quality against compute (PSNR to the dense reference; PSNR to the closest true render),
one line per method with the lowest and highest test set as bars, a legend underneath."""
from __future__ import annotations

import math

import numpy as np

from .. import font
from ..png import write_png

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#000000", "#aec7e8", "#98df8a", "#ff9896"]
PANEL = (620, 430)  # width, height of one panel in pixels
MARGIN = (62, 16, 20, 44)  # left, right, top, bottom inside a panel
TEXT = np.array([30, 30, 30], dtype=np.uint8)
GRID = np.array([225, 225, 225], dtype=np.uint8)


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def text(img: np.ndarray, x: int, y: int, s: str, color=TEXT, scale: int = 2) -> None:
    """The bitmap font at `scale` (nearest-neighbour), top-left at (x, y), clipped at the edges."""
    w, h = font.text_width(s), font.H
    if w <= 0:
        return
    tile = np.zeros((h, w, 3), dtype=np.uint8)
    font.draw_text(tile, 0, 0, s, (255, 255, 255))
    mask = tile[..., 0].repeat(scale, 0).repeat(scale, 1) > 0  # [h * scale, w * scale]
    y1, x1 = min(y + mask.shape[0], img.shape[0]), min(x + mask.shape[1], img.shape[1])
    if y1 > y and x1 > x:
        img[y:y1, x:x1][mask[:y1 - y, :x1 - x]] = color


def line(img: np.ndarray, p0, p1, color, width: int = 2, dash: int = 0) -> None:
    """A straight segment from p0 to p1 (x, y pixels); dash > 0 draws dash-long pieces with gaps."""
    n = max(int(math.hypot(p1[0] - p0[0], p1[1] - p0[1])), 1)
    for i in range(n + 1):
        if dash and (i // dash) % 2:
            continue
        x = round(p0[0] + (p1[0] - p0[0]) * i / n)
        y = round(p0[1] + (p1[1] - p0[1]) * i / n)
        img[max(y - width // 2, 0):y + (width + 1) // 2, max(x - width // 2, 0):x + (width + 1) // 2] = color


def _ticks(lo: float, hi: float, step: float) -> list[float]:
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def panel(curves: dict, key: str, title: str, colors: dict, y_range: tuple[float, float]) -> np.ndarray:
    """One panel -> uint8 [H, W, 3]: x = compute 0..1.05, y = `key` in dB (inf clipped to the top)."""
    w, h = PANEL
    left, right, top, bottom = MARGIN
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    (x0, x1), (y0, y1) = (0.0, 1.05), y_range
    pw, ph = w - left - right, h - top - bottom

    def to_px(x, y):
        y = min(max(y, y0), y1)
        return left + (x - x0) / (x1 - x0) * pw, top + ph - (y - y0) / (y1 - y0) * ph
    for xt in _ticks(x0, x1, 0.1):
        px = round(to_px(xt, y0)[0])
        img[top:top + ph, px] = GRID
        text(img, px - 12, top + ph + 6, f"{xt:.0%}", scale=1 if xt else 1)
    for yt in _ticks(y0, y1, 5.0 if y1 - y0 > 20 else 2.0):
        py = round(to_px(x0, yt)[1])
        img[py, left:left + pw] = GRID
        text(img, 8, py - 4, f"{yt:.0f}", scale=1)
    img[top:top + ph, left] = TEXT
    img[top + ph, left:left + pw] = TEXT
    text(img, left + 4, 4, title, scale=1)
    text(img, left + pw // 2 - 110, h - 18, "compute (share of dense at the reference steps)", scale=1)
    for name, pts in curves.items():
        pts = sorted((p for p in pts if math.isfinite(p["compute"])), key=lambda p: p["compute"])
        c, dash = colors[name], 6 if ("plan" in name or "untrained" in name) else 0
        xy = [to_px(p["compute"], p[key] if math.isfinite(p[key]) else y1) for p in pts]
        for a, b in zip(xy, xy[1:]):
            line(img, a, b, c, 2, dash)
        for p, (px, py) in zip(pts, xy):
            lo, hi = p.get(key + "_range", [p[key], p[key]])
            if all(math.isfinite(v) for v in (lo, hi)):
                line(img, to_px(p["compute"], lo), to_px(p["compute"], hi), c, 1)
            img[max(round(py) - 2, 0):round(py) + 3, max(round(px) - 2, 0):round(px) + 3] = c
    return img


def figure(res: dict) -> np.ndarray:
    """Both panels and the legend -> uint8 [H, W, 3]."""
    curves = res["curves"]
    colors = {n: _rgb(PALETTE[i % len(PALETTE)]) for i, n in enumerate(curves)}
    finite = [p[k] for pts in curves.values() for p in pts for k in ("psnr", "true_psnr") if math.isfinite(p[k])]
    lo = math.floor(min(finite) / 2) * 2
    hi_ref = math.ceil(max(p["psnr"] for pts in curves.values() for p in pts if math.isfinite(p["psnr"])) / 2) * 2
    hi_true = math.ceil(max(p["true_psnr"] for pts in curves.values() for p in pts) / 2) * 2 + 2
    ref = res["reference"]["ref_steps"]
    a = panel(curves, "psnr", f"PSNR (dB) against the dense {ref}-step output (top edge: identical)", colors,
              (lo, hi_ref + 2))
    b = panel(curves, "true_psnr", "PSNR (dB) against the closest true render", colors,
              (math.floor(min(p["true_psnr"] for pts in curves.values() for p in pts) / 2) * 2, hi_true))
    cols, row_h, col_w = 3, 22, (2 * PANEL[0]) // 3
    rows = -(-len(curves) // cols)
    legend = np.full((rows * row_h + 44, 2 * PANEL[0], 3), 255, dtype=np.uint8)
    text(legend, 10, 6, f"toy DiT, {len(res['reference']['psnr_ref_vs_hi'])} test sets: mean, bars from the lowest "
         "to the highest set, dashed: plans without routers, untrained static model", scale=1)
    for i, name in enumerate(curves):
        x, y = 10 + (i % cols) * col_w, 26 + (i // cols) * row_h
        line(legend, (x, y + 7), (x + 28, y + 7), colors[name], 3, 6 if ("plan" in name or "untrained" in name) else 0)
        text(legend, x + 36, y, name, scale=2 if font.text_width(name) * 2 < col_w - 50 else 1)
    return np.concatenate([np.concatenate([a, b], axis=1), legend], axis=0)


def plot(res: dict, path: str) -> str:
    """Write the figure as a PNG. -> path"""
    write_png(path, figure(res))
    return path
