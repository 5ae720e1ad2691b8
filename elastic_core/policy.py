"""Algorithm 1's decision rule, written once: skip, reuse a cached residual, or run at a width.

The runner decides every block call through a `Policy`; the what-if replay (`replay`, used by the
heatmap payload) decides through the same object, and web/heatmap.js mirrors `Policy.decide` line for
line (tested against this file with the same numbers). A new cache policy is one subclass.

The cache window has ONE meaning everywhere: `ElasticConfig.cache_start` / `cache_end` are percents of
the noise schedule (0 = pure noise, 1 = clean), as ComfyUI's own caches count them. A host turns them
into one boolean per step with its own schedule (`window`), and passes that boolean to the policy.

Under a cache budget (`ElasticConfig.cache_budget`) the policy also chooses which blocks' residuals
the bank keeps (`distance`, `admit`): first those whose last gate probability lies in or near the reuse
band, as those are the likeliest to be read again. A block whose residual was not kept runs where it
would have reused (`decide_held`: the action NOCACHE, exact compute).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

from .config import ElasticConfig
from .stats import NOCACHE, REUSE, RUN, SKIP


@dataclass(frozen=True)
class Decision:
    action: int  # SKIP / REUSE / RUN / NOCACHE (runs: the reuse it would have made had no residual)
    width: float  # width ratio the block runs at (for skip / reuse: what the router chose)


class Policy:
    """Skip when p < tau; reuse when p lies in [tau, tau + delta], the step is in the cache window and a
    cached residual exists that was reused fewer than K times in a row; otherwise run at the router's
    width (full width when width adaptation is off)."""

    def __init__(self, config: ElasticConfig):
        self.config = config

    def decide(self, step: int, block: int, p: float, width: float, caching: bool, reuses: int | None) -> Decision:
        """reuses: how often the cached residual was reused in a row; None when nothing usable is cached."""
        c = self.config
        w = width if c.width else 1.0
        if c.skip and p < c.tau:
            return Decision(SKIP, w)
        if caching and reuses is not None and c.tau <= p <= c.tau + c.delta and reuses < c.max_reuse:
            return Decision(REUSE, w)
        return Decision(RUN, w)

    def caching(self, in_window: bool) -> bool:
        """Whether a step may store and reuse residuals."""
        return self.config.cache and in_window

    def decide_held(self, step: int, block: int, p: float, width: float, caching: bool, reuses: int | None,
                    lost: int | None) -> Decision:
        """`decide`, where lost is the reuse count of a residual the cache budget did not keep (None: none
        lost). A run that happens only because of that loss is a NOCACHE: it runs, and is counted apart."""
        d = self.decide(step, block, p, width, caching, reuses)
        if d.action == RUN and reuses is None and lost is not None and \
                self.decide(step, block, p, width, caching, lost).action == REUSE:
            return Decision(NOCACHE, d.width)
        return d

    # -- the cache budget: which residuals to keep ---------------------------------------------------
    def distance(self, p: float, uses: int) -> float:
        """How unlikely a block's residual is to be read: 0 when its last gate probability p lies in the
        reuse band, else how far p is from it; inf once it was reused K times (it must run again)."""
        c = self.config
        if uses >= c.max_reuse:
            return math.inf
        return max(c.tau - p, p - (c.tau + c.delta), 0.0)

    def admit(self, distance: float, nbytes: int, held: Sequence[tuple[Hashable, float, int]],
              room: int) -> list[Hashable] | None:
        """Keep new residuals (`distance`, `nbytes`) with `room` bytes left under the budget? held:
        (key, distance, bytes) of the units held (the bank's: blocks). -> the keys to drop to make room,
        farthest from the band first and only those farther than the new one; None: drop the new one."""
        if nbytes <= room:
            return []
        out, need = [], nbytes - room
        for key, d, n in sorted(held, key=lambda h: -h[1]):  # stable: among equals, the older goes first
            if d <= distance:
                break
            out.append(key)
            need -= n
            if need <= 0:
                return out
        return None


Plan = Callable[[int, int], "tuple[int, float] | None"]  # (step, block) -> (action, width) or None


class PlanPolicy(Policy):
    """A fixed plan (benchmarks, random-plan controls): plan(step, block) -> (action, width), or None to
    let the routers decide. A planned reuse with nothing usable cached runs instead."""

    def __init__(self, config: ElasticConfig, plan: Plan):
        super().__init__(config)
        self.plan = plan

    def decide(self, step, block, p, width, caching, reuses) -> Decision:
        forced = self.plan(step, block)
        if forced is None:
            return super().decide(step, block, p, width, caching, reuses)
        action, width = forced
        if action == REUSE and not (caching and reuses is not None and reuses < self.config.max_reuse):
            return Decision(RUN, width)
        return Decision(action, width)


def in_window(config: ElasticConfig, percent: float) -> bool:
    """Whether a step at `percent` of the noise schedule lies in the cache window [start, end)."""
    return config.cache_start <= percent < config.cache_end


def window(config: ElasticConfig, percents: Sequence[float]) -> list[bool]:
    """One cache-window flag per step, from each step's percent of the noise schedule."""
    return [in_window(config, x) for x in percents]


def replay(policy: Policy, p: list[list], width: list[list],
           cache_steps: Sequence[bool]) -> list[list[Decision | None]]:
    """Algorithm 1 over one stream's recorded gate probabilities and router widths, [blocks][steps]
    (None: no call) -> decisions [blocks][steps]. Reuse counts are kept per block, as the runner's
    residual bank keeps them per block and stream."""
    out = []
    for b, (row_p, row_w) in enumerate(zip(p, width)):
        reuses: int | None = None  # nothing cached yet
        row: list[Decision | None] = []
        for s, (pb, wb) in enumerate(zip(row_p, row_w)):
            if pb is None:
                row.append(None)
                continue
            caching = policy.caching(cache_steps[s])
            d = policy.decide(s, b, pb, wb, caching, reuses)
            if d.action == REUSE:
                reuses += 1
            elif d.action == RUN and caching:
                reuses = 0  # a fresh residual was stored
            row.append(d)
        out.append(row)
    return out
