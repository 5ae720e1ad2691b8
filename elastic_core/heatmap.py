"""What the heatmap shows, computed once here: the widget (web/) and the stats image only draw it.

A payload holds, per view (stream x sample), block x step grids of the router's gate probability p,
the action taken (skip / reuse / run), the width chosen and the reuse count, plus what a what-if
needs: which steps were in the cache window and each block's cost at each width.

`what_if` re-decides a recorded run at other tau / delta / K from the recorded probabilities, through
the same policy the runner decides with. It is an estimate: with other decisions the model's inputs,
hence p, would change too; and it assumes a cache without a budget (a NOCACHE run of the record, a
block that ran because the budget had not kept its residual, replays as the reuse it would have been).
"""
from __future__ import annotations

import math

import numpy as np

from .config import ElasticConfig
from .policy import Policy, replay
from .stats import ACTIONS, NOCACHE, RAN, REUSE, RUN, SKIP, RunRecord, finite

SCHEMA = "elastic-dit/heatmap"
SCHEMA_VERSION = 1
# Gate probability ramp (viridis stops) and action marks; the widget draws with these same colours.
PALETTE = {
    "ramp": ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"],
    "skip": "#000000", "skip_alpha": 0.6,  # a dark veil over skipped cells
    "reuse": "#ffffff",  # a dot: residual reused from cache
    "width": "#ff7f0e",  # a bar at a run cell's foot, as long as the MLP width
    "nocache": "#ff4fd8",  # a ring: ran because the cache budget had not kept the residual to reuse
    "tau": "#ff2d55", "empty": "#2b2b2b", "grid": "#151515", "text": "#dddddd",
}


def _grid(n_blocks: int, n_steps: int, fill=None) -> list[list]:
    return [[fill] * n_steps for _ in range(n_blocks)]


def payload(record: RunRecord, estimate: bool = False) -> dict:
    """The JSON-ready heatmap data of a run record (the last event wins where a step ran twice)."""
    ev, n_b = record.events, len(record.blocks)
    n_s = max([record.num_steps] + [s + 1 for s in ev["step"]])
    views: dict[tuple[int, int], dict] = {}
    for j in range(len(record)):
        key = (ev["stream"][j], ev["sample"][j])
        v = views.get(key)
        if v is None:
            v = views[key] = {"stream": record.streams[key[0]], "sample": key[1],
                              **{c: _grid(n_b, n_s) for c in ("p", "action", "width", "reuse")}}
        b, s = ev["block"][j], ev["step"][j]
        for c in ("p", "action", "width", "reuse"):
            v[c][b][s] = ev[c][j]
    order = sorted(views, key=lambda k: (record.streams[k[0]] != "cond", record.streams[k[0]], k[1]))
    widths = record.widths
    return finite({
        "schema": SCHEMA, "version": SCHEMA_VERSION, "estimate": estimate,
        "blocks": record.blocks, "widths": widths, "actions": list(ACTIONS),
        "steps": [{"index": s, "sigma": record.steps.get(s), "cache": s in record.cache_steps} for s in range(n_s)],
        "config": record.config,
        "costs": [record.costs.get(i, [1.0] * len(widths)) for i in range(n_b)],  # per block: run at each width
        "router_costs": [record.router_costs.get(i, 0.0) for i in range(n_b)],  # per block: one router call
        "views": [views[k] for k in order],
        "summary": record.totals(),
        "palette": PALETTE,
    })


def step_column(record: RunRecord, first_event: int, step: int) -> dict:
    """One step of a run under way, for a live view: per view, per block p / action / width / reuse."""
    ev, n_b = record.events, len(record.blocks)
    views: dict[tuple[int, int], dict] = {}
    for j in range(first_event, len(record)):
        if ev["step"][j] != step:
            continue
        key = (ev["stream"][j], ev["sample"][j])
        v = views.setdefault(key, {"stream": record.streams[key[0]], "sample": key[1],
                                   **{c: [None] * n_b for c in ("p", "action", "width", "reuse")}})
        for c in ("p", "action", "width", "reuse"):
            v[c][ev["block"][j]] = ev[c][j]
    return finite({"step": step, "sigma": record.steps.get(step), "cache": step in record.cache_steps,
                   "num_steps": record.num_steps, "views": list(views.values())})


def live_header(record: RunRecord) -> dict:
    """What a live view needs before the first step arrives."""
    return finite({"schema": SCHEMA, "version": SCHEMA_VERSION, "blocks": record.blocks, "widths": record.widths,
                   "actions": list(ACTIONS), "num_steps": record.num_steps, "config": record.config,
                   "palette": PALETTE})


def what_if(pl: dict, view: int, tau: float, delta: float, max_reuse: int) -> dict:
    """Algorithm 1 replayed, through the run's own policy, on one view's recorded p at other thresholds.

    -> actions grid, skipped / reused shares, executed compute (routers included) and the estimated
    speedup. At the run's own thresholds it gives back the run's decisions and compute.
    """
    v, cfg = pl["views"][view], {k: x for k, x in pl["config"].items() if k != "version"}
    policy = Policy(ElasticConfig(**{**cfg, "tau": tau, "delta": delta, "max_reuse": int(max_reuse)}))
    decisions = replay(policy, v["p"], v["width"], [s["cache"] for s in pl["steps"]])
    widths, counts, spent, dense = pl["widths"], {a: 0 for a in ACTIONS}, 0.0, 0.0
    for b, row in enumerate(decisions):
        costs, router = pl["costs"][b], pl["router_costs"][b]
        for s, d in enumerate(row):
            if d is None and v["action"][b][s] == SKIP:  # p None, skipped: the step never reached the model
                counts["skip"] += 1
                dense += costs[-1]
            if d is None:
                continue
            counts[ACTIONS[d.action]] += 1
            dense += costs[-1]
            spent += router + (costs[widths.index(d.width) if d.width in widths else -1] if d.action == RUN else 0.0)
    n = max(sum(counts.values()), 1)
    frac = spent / dense if dense else 1.0
    unreached = [[d is None and v["action"][b][s] == SKIP for s, d in enumerate(row)] for b, row in enumerate(decisions)]
    return {"action": [[SKIP if u else None if d is None else d.action for d, u in zip(row, un)]
                       for row, un in zip(decisions, unreached)],
            "skipped": counts["skip"] / n, "reused": counts["reuse"] / n,
            "executed_fraction": frac, "estimated_speedup": 1.0 / frac if frac else float("inf")}


# -- the same picture as a raster, for the stats node's IMAGE output ---------------------------------

def _hex(c: str) -> np.ndarray:
    return np.array([int(c[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float32)


def ramp(p: float) -> np.ndarray:
    stops = [_hex(c) for c in PALETTE["ramp"]]
    x = min(max(p, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    return stops[i] + (stops[i + 1] - stops[i]) * (x - i)


def render(pl: dict, view: int = 0, cell: tuple[int, int] = (12, 8), legend: int = 18) -> np.ndarray:
    """Blocks as rows, steps as columns, a colour ramp legend with tau marked. -> uint8 [H, W, 3]"""
    v = pl["views"][view]
    n_b, n_s = len(v["p"]), len(pl["steps"])
    cw, ch = cell
    img = np.empty((n_b * ch + legend, max(n_s * cw, 64), 3), dtype=np.float32)
    img[:] = _hex(PALETTE["grid"])
    for b in range(n_b):
        for s in range(n_s):
            y, x = b * ch, s * cw
            box = img[y + 1:y + ch, x + 1:x + cw]
            p = v["p"][b][s]
            a = v["action"][b][s]
            if p is None and a != SKIP:
                box[:] = _hex(PALETTE["empty"])
                continue
            box[:] = _hex(PALETTE["empty"]) if p is None else ramp(p)  # p None + skip: never reached the model
            if a == SKIP:
                box[:] = box * (1 - PALETTE["skip_alpha"]) + _hex(PALETTE["skip"]) * PALETTE["skip_alpha"]
            elif a == REUSE:
                box[ch // 2 - 2:ch // 2 + 1, cw // 2 - 2:cw // 2 + 1] = _hex(PALETTE["reuse"])
            elif a in RAN:
                box[-2:, : max(1, round((cw - 1) * v["width"][b][s]))] = _hex(PALETTE["width"])
            if a == NOCACHE:  # a ring where a reuse would have had its dot
                ring = box[ch // 2 - 3:ch // 2 + 1, cw // 2 - 2:cw // 2 + 2]
                ring[[0, -1]] = ring[:, [0, -1]] = _hex(PALETTE["nocache"])
    top = n_b * ch + 4
    for x in range(img.shape[1]):  # the p ramp, 0 at the left, 1 at the right
        img[top:top + 8, x] = ramp(x / (img.shape[1] - 1))
    tau = pl["config"].get("tau", 0.5)
    tx = round(tau * (img.shape[1] - 1))
    img[top - 2:top + 10, max(0, tx - 1):tx + 1] = _hex(PALETTE["tau"])
    return img.clip(0, 255).astype(np.uint8)


def cache_line(totals: dict, config: dict) -> str:
    """The residual cache in one line: its peak, the budget, and the runs the budget caused."""
    budget = config.get("cache_budget")
    line = f"cache peak {totals.get('cache_bytes_peak', 0) / 2**20:.1f} MiB, budget " + (
        "none" if budget is None else f"{budget / 2**30:.2f} GiB")
    if totals.get("no_cache"):
        line += f", no cache {totals['no_cache']:.0%}"
    return line


def _step_labels(n_s: int, cw: int, label_w: float) -> list[int]:
    """The steps whose number the axis prints: every k-th, k the fewest cells that hold the widest number
    plus a gap, so numbers never run together ("10111213..." once did)."""
    every = max(1, math.ceil((label_w + 6) / cw))
    return list(range(0, n_s, every))


def picture(pl: dict, view: int = 0, scale: int = 2, label: str | None = None) -> np.ndarray:
    """The heatmap with its words: title, summary, block names, step axis and a legend (the p ramp with
    tau and the reuse band [tau, tau + delta], and the three marks), drawn with Pillow: the stats node's
    IMAGE and the demo's heatmap.png. `label` names what is shown (default: the view's stream and sample
    index in its batch). -> uint8 [H, W, 3]"""
    from PIL import Image, ImageDraw

    from .draw import fit, font, text_width, to_array
    v, t, cfg = pl["views"][view], pl["summary"], pl["config"]
    cw, ch, fs = 12 * scale, 8 * scale, max(8, 6 * scale + 1)
    f, pad = font(fs), 2 * scale
    grid = render(pl, view, cell=(cw, ch), legend=0)  # [n_b * ch, n_s * cw, 3]
    n_s = len(pl["steps"])
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = min(max([text_width(probe, b["name"], f) for b in pl["blocks"]] + [40]), 26 * fs * 0.6) + 2 * pad
    head, axis, legend = 3 * (fs + pad) + pad, fs + 2 * pad, 2 * (fs + pad) + 10 * scale
    width = int(max(label_w + grid.shape[1] + pad, 2 * label_w + 220 * scale))
    img = Image.new("RGB", (width, head + grid.shape[0] + axis + legend), tuple(int(c) for c in _hex(PALETTE["grid"])))
    d, text = ImageDraw.Draw(img), tuple(int(c) for c in _hex(PALETTE["text"]))
    est = "what-if estimate - " if pl.get("estimate") else ""
    name = label or f"{v['stream']} sample {v['sample']}"
    d.text((pad, pad), fit(d, f"{est}Elastic DiT - {name} - tau {cfg.get('tau')} delta {cfg.get('delta')} "
                              f"K {cfg.get('max_reuse')}", f, width - 2 * pad, keep="start"), fill=text, font=f)
    speed = t.get("estimated_speedup")
    d.text((pad, 2 * pad + fs), f"skipped {t['skipped']:.0%}  reused {t['reused']:.0%}  width {t['mean_width']:.2f}  "
           f"compute {t['executed_fraction']:.0%}  est. " + (f"{speed:.2f}x" if speed is not None and np.isfinite(speed)
                                                              else "-"), fill=text, font=f)
    d.text((pad, 3 * pad + 2 * fs), fit(d, cache_line(t, cfg), f, width - 2 * pad), fill=text, font=f)
    img.paste(Image.fromarray(grid), (int(label_w), head))
    for b, blk in enumerate(pl["blocks"]):
        d.text((pad, head + b * ch + (ch - fs) // 2), fit(d, blk["name"], f, label_w - 2 * pad), fill=text, font=f)
    y = head + grid.shape[0] + pad
    for s in _step_labels(n_s, cw, text_width(d, str(n_s - 1), f)):
        d.text((label_w + s * cw + 1, y), str(s), fill=text, font=f)
    d.text((pad, y), "step", fill=text, font=f)
    _legend(d, img, pl, (int(label_w), y + axis), width - 2 * int(label_w), f, scale)
    return to_array(img)


def _legend(d, img, pl: dict, at: tuple[int, int], ramp_w: int, f, scale: int) -> None:
    """The p ramp, 0 to 1, with tau and the reuse band [tau, tau + delta] marked; then the three marks."""
    from .draw import text_width
    x0, y = at
    cfg, fs, text = pl["config"], f.size if hasattr(f, "size") else 10, tuple(int(c) for c in _hex(PALETTE["text"]))
    tau, delta = float(cfg.get("tau", 0.5)), float(cfg.get("delta", 0.0))
    bar = np.stack([ramp(x / max(ramp_w - 1, 1)) for x in range(ramp_w)]).astype(np.uint8)[None]  # [1, W, 3]
    img.paste(_image(bar.repeat(3 * scale, 0)), (x0, y))
    px = lambda p: x0 + round(min(max(p, 0.0), 1.0) * (ramp_w - 1))  # noqa: E731
    red, white = tuple(int(c) for c in _hex(PALETTE["tau"])), tuple(int(c) for c in _hex(PALETTE["reuse"]))
    if delta > 0:  # the reuse band: a white bracket above the ramp from tau to tau + delta
        d.rectangle([px(tau), y - 2 * scale, max(px(tau + delta), px(tau) + 1), y - scale], fill=white)
    d.rectangle([px(tau) - scale // 2, y - 3 * scale, px(tau) + scale // 2, y + 4 * scale], fill=red)
    d.text((x0 - text_width(d, "gate p ", f) - 2, y - scale), "gate p", fill=text, font=f)
    ly = y + 4 * scale + 2
    d.text((x0, ly), "0", fill=text, font=f)
    d.text((x0 + ramp_w - text_width(d, "1", f), ly), "1", fill=text, font=f)
    band = f"tau {tau:g}" + (f", reuse band to {tau + delta:g}" if delta > 0 else "")
    bx = min(max(px(tau) - text_width(d, band, f) / 2, x0 + text_width(d, "0  ", f)),
             x0 + ramp_w - text_width(d, band + "  1", f))
    d.text((bx, ly), band, fill=red, font=f)
    keys = [("skipped: dark", (60, 60, 60)), ("reused: white dot", white), ("ran: orange bar = MLP width",
                                                                            tuple(int(c) for c in _hex(PALETTE["width"])))]
    kx, ky = 2 * scale, ly + fs + 2 * scale  # the marks' key runs from the left edge
    for words, color in keys:
        d.rectangle([kx, ky + 2, kx + 3 * scale, ky + 2 + 3 * scale], fill=color)
        d.text((kx + 4 * scale + 2, ky), words, fill=text, font=f)
        kx += 4 * scale + 2 + text_width(d, words, f) + 6 * scale


def _image(arr: np.ndarray):
    """uint8 [H, W, 3] -> a Pillow image."""
    from PIL import Image
    return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "RGB")
