"""The toy benchmark's figure: two panels, quality against compute (PSNR to the dense reference; PSNR to
the closest true render), one line per method with the lowest and highest test set as bars, a legend
underneath. Drawn with matplotlib where it is installed (`pip install -e '.[plots]'`), else with Pillow
(one of ComfyUI's requirements), so the benchmark never needs a plotting library to run."""
from __future__ import annotations

import math

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#000000", "#aec7e8", "#98df8a", "#ff9896"]
PANEL = (620, 430)  # width, height of one panel in pixels (Pillow)
MARGIN = (62, 16, 24, 44)  # left, right, top, bottom inside a panel (Pillow)


def _dashed(name: str) -> bool:
    """Plans that ignore the routers and the untrained static model: dashed, as references."""
    return "plan" in name or "untrained" in name


def panels(res: dict) -> list[dict]:
    """What each panel shows: key, title, y range (dB; an infinite PSNR, identical images, sits at the top)."""
    curves, ref = res["curves"], res["reference"]["ref_steps"]

    def values(k):
        return [p[k] for pts in curves.values() for p in pts if math.isfinite(p[k])] or [0.0]
    lo_ref, hi_ref = math.floor(min(values("psnr") + values("true_psnr")) / 2) * 2, math.ceil(max(values("psnr")) / 2) * 2
    lo_true, hi_true = math.floor(min(values("true_psnr")) / 2) * 2, math.ceil(max(values("true_psnr")) / 2) * 2 + 2
    return [{"key": "psnr", "title": f"PSNR (dB) against the dense {ref}-step output (top edge: identical)",
             "range": (lo_ref, hi_ref + 2)},
            {"key": "true_psnr", "title": "PSNR (dB) against the closest true render", "range": (lo_true, hi_true)}]


def _series(pts: list[dict], key: str, top: float) -> tuple[list, list, list, list]:
    """x, y, bar low, bar high of a curve, by compute; infinite values drawn at `top`."""
    pts = sorted((p for p in pts if math.isfinite(p["compute"])), key=lambda p: p["compute"])
    clip = lambda v: v if math.isfinite(v) else top  # noqa: E731
    lo = [clip(p.get(key + "_range", [p[key]] * 2)[0]) for p in pts]
    hi = [clip(p.get(key + "_range", [p[key]] * 2)[1]) for p in pts]
    return [p["compute"] for p in pts], [clip(p[key]) for p in pts], lo, hi


def caption(res: dict) -> str:
    return (f"toy DiT, {len(res['reference']['psnr_ref_vs_hi'])} test sets: mean, bars from the lowest to the "
            "highest set; dashed: plans without routers, untrained static model")


def plot(res: dict, path: str) -> str:
    """Write the figure as a PNG, with matplotlib when installed. -> path"""
    try:
        import matplotlib
    except ImportError:
        return plot_pillow(res, path)
    matplotlib.use("Agg")  # no display: a file
    return plot_matplotlib(res, path)


def plot_matplotlib(res: dict, path: str) -> str:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    for ax, pan in zip(axes, panels(res)):
        top = pan["range"][1]
        for i, (name, pts) in enumerate(res["curves"].items()):
            x, y, lo, hi = _series(pts, pan["key"], top)
            err = [[max(a - b, 0.0) for a, b in zip(y, lo)], [max(b - a, 0.0) for a, b in zip(y, hi)]]
            ax.errorbar(x, y, yerr=err, color=PALETTE[i % len(PALETTE)], linestyle="--" if _dashed(name) else "-",
                        marker="o", markersize=3, capsize=2, linewidth=1.5, label=name)
        ax.set(xlim=(0, 1.05), ylim=pan["range"], xlabel="compute (share of dense at the reference steps)",
               title=pan["title"])
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
        ax.grid(True, color="#e1e1e1")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.text(0.01, 0.005, caption(res), fontsize=8)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * math.ceil(len(labels) / 3), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_pillow(res: dict, path: str) -> str:
    from PIL import Image, ImageDraw

    from ..draw import font
    curves, cols, row_h = res["curves"], 3, 22
    rows = -(-len(curves) // cols)
    img = Image.new("RGB", (2 * PANEL[0], PANEL[1] + rows * row_h + 40), "white")
    d, f = ImageDraw.Draw(img), font(12)
    for k, pan in enumerate(panels(res)):
        _panel(d, f, curves, pan, k * PANEL[0])
    d.text((10, PANEL[1] + 4), caption(res), fill=(30, 30, 30), font=f)
    col_w = 2 * PANEL[0] // cols
    for i, name in enumerate(curves):
        x, y = 10 + (i % cols) * col_w, PANEL[1] + 26 + (i // cols) * row_h
        _line(d, [(x, y + 8), (x + 28, y + 8)], PALETTE[i % len(PALETTE)], 3, _dashed(name))
        d.text((x + 36, y), name, fill=(30, 30, 30), font=f)
    img.save(path, format="PNG")
    return path


def _line(d, xy: list, color: str, width: int, dashed: bool) -> None:
    if not dashed:
        d.line(xy, fill=color, width=width)
        return
    for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
        n = max(int(math.hypot(x1 - x0, y1 - y0) // 6), 1)
        for j in range(0, n, 2):  # 6-pixel dashes with 6-pixel gaps
            d.line([(x0 + (x1 - x0) * j / n, y0 + (y1 - y0) * j / n),
                    (x0 + (x1 - x0) * (j + 1) / n, y0 + (y1 - y0) * (j + 1) / n)], fill=color, width=width)


def _panel(d, f, curves: dict, pan: dict, ox: int) -> None:
    """One panel at x offset ox: axes, grid, ticks, title, every curve with its bars."""
    w, h = PANEL
    left, right, top, bottom = MARGIN
    (x0, x1), (y0, y1) = (0.0, 1.05), pan["range"]
    pw, ph = w - left - right, h - top - bottom
    px = lambda x, y: (ox + left + (x - x0) / (x1 - x0) * pw,  # noqa: E731
                       top + ph - (min(max(y, y0), y1) - y0) / (y1 - y0) * ph)
    ink, grid = (30, 30, 30), (225, 225, 225)
    for k in range(11):
        gx = px(k / 10, y0)[0]
        d.line([(gx, top), (gx, top + ph)], fill=grid)
        d.text((gx - 10, top + ph + 6), f"{k / 10:.0%}", fill=ink, font=f)
    step = 5.0 if y1 - y0 > 20 else 2.0
    for k in range(math.ceil(y0 / step), math.floor(y1 / step) + 1):
        gy = px(x0, k * step)[1]
        d.line([(ox + left, gy), (ox + left + pw, gy)], fill=grid)
        d.text((ox + 8, gy - 7), f"{k * step:.0f}", fill=ink, font=f)
    d.line([(ox + left, top), (ox + left, top + ph), (ox + left + pw, top + ph)], fill=ink)
    d.text((ox + left + 4, 4), pan["title"], fill=ink, font=f)
    d.text((ox + left + pw // 2 - 150, h - 18), "compute (share of dense at the reference steps)", fill=ink, font=f)
    for i, (name, pts) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        xs, ys, lo, hi = _series(pts, pan["key"], y1)
        xy = [px(x, y) for x, y in zip(xs, ys)]
        if len(xy) > 1:
            _line(d, xy, color, 2, _dashed(name))
        for x, a, b, (cx, cy) in zip(xs, lo, hi, xy):
            d.line([px(x, a), px(x, b)], fill=color, width=1)
            d.rectangle([cx - 2, cy - 2, cx + 2, cy + 2], fill=color)
