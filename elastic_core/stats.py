"""The statistics record of one sampling run: what every router said and what the engine did.

One event per (model call, block, row): step, block, stream, sample, p, width ratio chosen by the
router, action (skip / reuse / run) and the reuse count after it. Events are stored as columns with
small integer codes, so a 60-block, 50-step CFG run stays a few hundred kB of JSON.
This is what the heatmap widget, the stats node and the logs read.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

SCHEMA = "elastic-dit/run-record"
SCHEMA_VERSION = 1
ACTIONS = ("skip", "reuse", "run", "nocache")
# NOCACHE: the block ran where it would have reused, because the cache budget had not kept its residual
SKIP, REUSE, RUN, NOCACHE = range(4)
RAN = (RUN, NOCACHE)  # the actions that execute the block
COLUMNS = ("step", "block", "stream", "sample", "p", "width", "action", "reuse")


def finite(obj):
    """obj with every NaN / Inf float replaced by None, so that its JSON parses in a browser."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


@dataclass
class RunRecord:
    blocks: list[dict]  # [{"name": "double_blocks.0", "group": "double"}, ...]
    widths: list[float]  # the router's width set
    config: dict  # the ElasticConfig in force
    num_steps: int = 0
    steps: dict[int, float | None] = field(default_factory=dict)  # step index -> sigma
    cache_steps: set[int] = field(default_factory=set)  # steps inside the cache window
    # per block, one sample: FLOPs when skipped or reused (0), and run at each width of `widths`
    costs: dict[int, list[float]] = field(default_factory=dict)
    router_costs: dict[int, float] = field(default_factory=dict)  # per block, one sample: one router call
    streams: list[str] = field(default_factory=list)
    events: dict[str, list] = field(default_factory=lambda: {c: [] for c in COLUMNS})
    flops: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("dense_attn", "dense_mlp", "exec_attn", "exec_mlp", "router"), 0.0))
    cache_bytes_peak: int = 0
    cache_bytes_stored: int = 0  # all residual bytes the cache took in, over the run
    cache_bytes_read: int = 0  # all residual bytes reuses read back
    wall_time_s: float = 0.0
    meta: dict = field(default_factory=dict)

    # -- filling -----------------------------------------------------------------------------
    def stream_code(self, stream: str) -> int:
        if stream not in self.streams:
            self.streams.append(stream)
        return self.streams.index(stream)

    def add(self, step: int, block: int, stream: str, sample: int, p: float, width: float, action: int, reuse: int):
        ev = self.events
        p = round(p, 6) if math.isfinite(p) else None  # None: no router ran (the step never reached the model)
        for col, v in zip(COLUMNS, (step, block, self.stream_code(stream), sample, p, width, action, reuse)):
            ev[col].append(v)

    # -- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.events["step"])

    def counts(self) -> dict[str, int]:
        acts = self.events["action"]
        return {name: acts.count(code) for code, name in enumerate(ACTIONS)}

    def mean_width(self) -> float:
        """Mean width ratio over the block executions that ran (skips and reuses excluded)."""
        w = [w for w, a in zip(self.events["width"], self.events["action"]) if a in RAN]
        return sum(w) / len(w) if w else 0.0

    def executed_fraction(self) -> float:
        f = self.flops
        dense = f["dense_attn"] + f["dense_mlp"]
        return (f["exec_attn"] + f["exec_mlp"] + f["router"]) / dense if dense else 1.0

    def totals(self) -> dict:
        n = max(len(self), 1)
        c = self.counts()
        frac = self.executed_fraction()
        return {
            "events": len(self),
            "counts": c,
            "skipped": c["skip"] / n, "reused": c["reuse"] / n, "ran": (c["run"] + c["nocache"]) / n,
            "no_cache": c["nocache"] / n,  # of all events: runs the cache budget caused (part of "ran")
            "mean_width": self.mean_width(),
            "flops": dict(self.flops),
            "executed_fraction": frac,
            "estimated_speedup": 1.0 / frac if frac > 0 else float("inf"),
            "cache_bytes_peak": self.cache_bytes_peak,
            "cache_bytes_stored": self.cache_bytes_stored, "cache_bytes_read": self.cache_bytes_read,
            "wall_time_s": self.wall_time_s,
        }

    def summary(self) -> str:
        t = self.totals()
        lost = f" ({t['no_cache']:.1%} for want of cache)" if t["no_cache"] else ""
        return (f"blocks skipped {t['skipped']:.1%} / reused {t['reused']:.1%} / run {t['ran']:.1%}{lost}, "
                f"mean width {t['mean_width']:.2f}, executed compute {t['executed_fraction']:.1%} of dense "
                f"(est. {t['estimated_speedup']:.2f}x), cache peak {t['cache_bytes_peak'] / 2**20:.1f} MiB, "
                f"wall {t['wall_time_s']:.2f} s")

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready; non-finite numbers (an estimated speedup when nothing ran) become null."""
        return finite({
            "schema": SCHEMA, "version": SCHEMA_VERSION,
            "blocks": self.blocks, "widths": self.widths, "config": self.config,
            "num_steps": self.num_steps,
            "steps": [{"index": i, "sigma": s, "cache": i in self.cache_steps} for i, s in sorted(self.steps.items())],
            "costs": [self.costs.get(i) for i in range(len(self.blocks))],
            "router_costs": [self.router_costs.get(i) for i in range(len(self.blocks))],
            "streams": self.streams, "actions": list(ACTIONS),
            "events": self.events,
            "totals": self.totals(), "meta": self.meta,
        })

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kw)

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not an elastic-dit run record (schema {d.get('schema')!r})")
        if d.get("version") != SCHEMA_VERSION:
            raise ValueError(f"run record version {d.get('version')} is not supported (expected {SCHEMA_VERSION})")
        missing = [c for c in COLUMNS if c not in d["events"]]
        if missing:
            raise ValueError(f"run record lacks event columns {missing}")
        t = d.get("totals", {})
        return cls(blocks=d["blocks"], widths=d["widths"], config=d["config"], num_steps=d["num_steps"],
                   steps={s["index"]: s["sigma"] for s in d["steps"]},
                   cache_steps={s["index"] for s in d["steps"] if s.get("cache")},
                   costs={i: c for i, c in enumerate(d.get("costs", [])) if c is not None},
                   router_costs={i: c for i, c in enumerate(d.get("router_costs", [])) if c is not None},
                   streams=list(d["streams"]),
                   events={c: list(d["events"][c]) for c in COLUMNS}, flops=dict(t.get("flops", {})),
                   cache_bytes_peak=t.get("cache_bytes_peak", 0), cache_bytes_stored=t.get("cache_bytes_stored", 0),
                   cache_bytes_read=t.get("cache_bytes_read", 0), wall_time_s=t.get("wall_time_s", 0.0),
                   meta=d.get("meta", {}))

    @classmethod
    def from_json(cls, text: str) -> "RunRecord":
        return cls.from_dict(json.loads(text))
