"""What the heatmap shows, computed once here: the widget (web/) and the stats image only draw it.

A payload holds, per view (stream x sample), block x step grids of the router's gate probability p,
the action taken (skip / reuse / run), the width chosen and the reuse count, plus what a what-if
needs: which steps were in the cache window and each block's cost at each width.

`what_if` re-decides a recorded run at other tau / delta / K from the recorded probabilities, through
the same policy the runner decides with. It is an estimate: with other decisions the model's inputs,
hence p, would change too.
"""
from __future__ import annotations

import numpy as np

from . import font
from .config import ElasticConfig
from .policy import Policy, replay
from .stats import ACTIONS, REUSE, RUN, SKIP, RunRecord, finite

SCHEMA = "elastic-dit/heatmap"
SCHEMA_VERSION = 1
# Gate probability ramp (viridis stops) and action marks; the widget draws with these same colours.
PALETTE = {
    "ramp": ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"],
    "skip": "#000000", "skip_alpha": 0.6,  # a dark veil over skipped cells
    "reuse": "#ffffff",  # a dot: residual reused from cache
    "width": "#ff7f0e",  # a bar at a run cell's foot, as long as the MLP width
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
            elif a == RUN:
                box[-2:, : max(1, round((cw - 1) * v["width"][b][s]))] = _hex(PALETTE["width"])
    top = n_b * ch + 4
    for x in range(img.shape[1]):  # the p ramp, 0 at the left, 1 at the right
        img[top:top + 8, x] = ramp(x / (img.shape[1] - 1))
    tau = pl["config"].get("tau", 0.5)
    tx = round(tau * (img.shape[1] - 1))
    img[top - 2:top + 10, max(0, tx - 1):tx + 1] = _hex(PALETTE["tau"])
    return img.clip(0, 255).astype(np.uint8)


def picture(pl: dict, view: int = 0, scale: int = 2) -> np.ndarray:
    """The heatmap with its words: title, summary, block names, step axis and a labelled p legend (the
    stats node's IMAGE and the demo's heatmap.png). -> uint8 [H, W, 3]"""
    v, t, cfg = pl["views"][view], pl["summary"], pl["config"]
    cw, ch = 12, 8
    grid = render(pl, view, cell=(cw, ch), legend=0)  # [n_b * ch, n_s * cw, 3]
    n_b, n_s = len(v["p"]), len(pl["steps"])
    label_w = font.text_width("x" * 18) + 6
    head, axis, legend = 2 * (font.H + 4) + 2, font.H + 4, font.H + 16
    width = max(label_w + grid.shape[1] + 4, 2 * label_w + 160)
    img = np.empty((head + grid.shape[0] + axis + legend, width, 3), dtype=np.uint8)
    img[:] = _hex(PALETTE["grid"]).astype(np.uint8)
    text = _hex(PALETTE["text"])
    est = "what-if estimate - " if pl.get("estimate") else ""
    font.draw_text(img, 3, 3, f"{est}Elastic DiT - {v['stream']} sample {v['sample']} - tau {cfg.get('tau')} "
                   f"delta {cfg.get('delta')} K {cfg.get('max_reuse')}", text)
    speed = t.get("estimated_speedup")
    font.draw_text(img, 3, 3 + font.H + 4, f"skipped {t['skipped']:.0%}  reused {t['reused']:.0%}  width "
                   f"{t['mean_width']:.2f}  compute {t['executed_fraction']:.0%}  est. "
                   + (f"{speed:.2f}x" if speed is not None and np.isfinite(speed) else "-"), text)
    img[head:head + grid.shape[0], label_w:label_w + grid.shape[1]] = grid
    for b, blk in enumerate(pl["blocks"]):
        font.draw_text(img, 3, head + b * ch, blk["name"][-18:], text, max_width=label_w - 6)
    every = max(1, -(-font.text_width(str(n_s)) // cw))  # label every `every` steps so numbers never touch
    y = head + grid.shape[0] + 2
    for s in range(0, n_s, every):
        font.draw_text(img, label_w + s * cw + 1, y, str(s), text)
    font.draw_text(img, 3, y, "step", text)
    y += axis
    ramp_w = width - 2 * label_w
    for x in range(ramp_w):  # p from 0 at the left to 1 at the right, tau marked
        img[y:y + 6, label_w + x] = ramp(x / max(ramp_w - 1, 1)).astype(np.uint8)
    tx = label_w + round(cfg.get("tau", 0.5) * (ramp_w - 1))
    img[y - 2:y + 8, max(0, tx - 1):tx + 1] = _hex(PALETTE["tau"]).astype(np.uint8)
    font.draw_text(img, 3, y, "gate p", text)
    font.draw_text(img, label_w, y + 8, "0", text)
    font.draw_text(img, label_w + ramp_w - font.W, y + 8, "1", text)
    font.draw_text(img, tx - font.text_width("tau") // 2, y + 8, "tau", _hex(PALETTE["tau"]))
    return img.repeat(scale, 0).repeat(scale, 1)
