"""Algorithm 1: per block and per sample, skip, reuse a cached residual, or run at the chosen width.

The engine never owns the block loop of a host model: a host calls `ElasticRun.block(...)` from its
per-block hook, handing in the block's input streams, the conditioning vector and a `run` callable
that executes the original block on given rows at a given width. `run_stack` is the same loop for a
plain list of blocks (tests, benchmarks, the toy model).

Decisions are per row. Rows carry a key (stream, sample): cond and uncond of one sample, or two
samples of a batch, never share a residual. Rows that run the block run it on their rows only, so
each row's result equals running that sample alone.
"""
from __future__ import annotations

import time
from typing import Callable, Hashable, Sequence

import torch
from torch import Tensor

from .blocks import BlockSpec
from .cache import ResidualBank
from .policy import Decision, Policy
from .router import RouterSet
from .stats import RAN, REUSE, RUN, SKIP, RunRecord

Streams = dict[str, Tensor]  # stream name -> [B, L, D]
# run(inputs of the rows, row indices or None for all rows, width ratio) -> outputs of those rows
RunFn = Callable[[Streams, "Tensor | None", float], Streams]
RowKey = tuple[str, int]  # (stream such as "cond" / "uncond", sample index)


class ElasticRun:
    """State of ONE sampling run: residual banks, step counter and the statistics record."""

    def __init__(self, routers: RouterSet, specs: Sequence[BlockSpec], policy: Policy, num_steps: int,
                 meta: dict | None = None):
        if len(specs) != len(routers):
            raise ValueError(f"{len(specs)} blocks but {len(routers)} routers")
        self.routers, self.specs, self.policy = routers, list(specs), policy
        self.num_steps = num_steps
        self.bank = ResidualBank(policy.config.cache_device, policy.config.cache_budget, policy)
        self.step, self.caching = 0, False
        self._fresh: list = []  # the block call under way: (row key, residual) of its rows that ran
        self.record = RunRecord(blocks=[{"name": s.name, "group": s.group or s.kind} for s in specs],
                                widths=list(routers.config.widths), config=policy.config.to_dict(),
                                num_steps=num_steps, meta=dict(meta or {}))
        self._dense: dict[int, tuple[float, float]] = {}  # block -> one row's (attention, full MLP) FLOPs
        self._keys: dict[RowKey, None] = {}  # the rows seen in this run, in order
        self._t0 = time.perf_counter()

    @property
    def config(self):
        return self.policy.config

    def begin_step(self, step: int, sigma: float | None, in_window: bool) -> None:
        """in_window: whether this step lies in the cache window, as the host counts it on its noise
        schedule (`policy.window`); the policy adds the cache switch."""
        self.step = step
        self.caching = self.policy.caching(in_window)
        self.record.steps[step] = sigma
        if self.caching:
            self.record.cache_steps.add(step)

    def unreached(self, steps: dict[int, tuple[float | None, bool]]) -> None:
        """Steps (-> sigma, in the cache window) whose rows never reached the model: a step cache in front
        of the pack (ComfyUI's EasyCache / LazyCache) returned its own prediction. Each such row is
        recorded as every block skipped (p None: no router ran), and its dense cost is counted with
        nothing executed, so that record, heatmap and compute count the run's steps alike."""
        seen = set(zip(self.record.events["step"], self.record.events["stream"], self.record.events["sample"]))
        f = self.record.flops
        for step, (sigma, in_window) in sorted(steps.items()):
            rows = [k for k in self._keys if (step, self.record.stream_code(k[0]), k[1]) not in seen]
            if not rows:
                continue
            self.begin_step(step, sigma, in_window)
            for i, (attn, mlp) in sorted(self._dense.items()):
                for stream, sample in rows:
                    f["dense_attn"] += attn
                    f["dense_mlp"] += mlp
                    self.record.add(step, i, stream, sample, float("nan"), 1.0, SKIP, 0)

    def finish(self) -> RunRecord:
        self.record.cache_bytes_peak = self.bank.peak_bytes
        self.record.cache_bytes_stored, self.record.cache_bytes_read = self.bank.stored_bytes, self.bank.read_bytes
        self.record.wall_time_s = time.perf_counter() - self._t0
        self.bank.clear()
        return self.record

    # -- deciding --------------------------------------------------------------------------------
    def _decide(self, i: int, p: float, width_idx: int, key: Hashable, shapes) -> Decision:
        entry = self.bank.get(i, key) if self.caching else None
        reuses = entry.uses if entry is not None and entry.fits(shapes) else None
        lost = self.bank.lost.get((i, key)) if self.caching and entry is None else None
        self.bank.last_p[(i, key)] = p  # what the budget keeps residuals by
        return self.policy.decide_held(self.step, i, p, self.routers.config.widths[width_idx], self.caching,
                                       reuses, lost)

    def _prefetch(self, i: int, keys, like: Tensor) -> None:
        """With a cache device: start fetching the next block's residuals that its rows' last gate
        probabilities say will be reused, while this block's result is computed on."""
        if self.bank.mover is None or not self.caching:
            return
        nxt = (i + 1) % len(self.specs)
        want = [k for k in keys if (e := self.bank.get(nxt, k)) is not None
                and self.policy.distance(self.bank.last_p.get((nxt, k), 0.0), e.uses) == 0.0]
        self.bank.prefetch(nxt, want, like.device, like.dtype)

    # -- one block -------------------------------------------------------------------------------
    def block(self, i: int, inputs: Streams, cond: Tensor, run: RunFn,
              router_tokens: Sequence[Tensor] | None = None, row_keys: Sequence[RowKey] | None = None,
              inplace: bool = False) -> Streams:
        """Algorithm 1 for block i on a batch. inputs: {"img": [B, L, D], ...}; cond: [B, C].

        inplace: `run` adds into the tensors it is given (Flux-type host blocks); the engine then hands
        it copies, so that residuals are taken against the true inputs.
        """
        b = next(iter(inputs.values())).shape[0]
        keys = list(row_keys) if row_keys is not None else [("cond", r) for r in range(b)]
        if len(keys) != b:
            raise ValueError(f"block {i}: {len(keys)} row keys for a batch of {b}")
        with torch.no_grad():
            out = self.routers[i](list(router_tokens) if router_tokens is not None else list(inputs.values()), cond)
            finite = torch.isfinite(out.gate_logit).all() & torch.isfinite(out.width_logits).all()
        ps, ws = out.p.tolist(), out.width_index.tolist()  # one host sync per block
        if not finite:
            raise FloatingPointError(
                f"Elastic DiT: the router of block {i} ({self.specs[i].name}) gave NaN or Inf at step {self.step}; "
                "the block's input or the router weights are not finite (a model running out of range in fp16, "
                "or a damaged router file). Nothing was decided from it.")
        shapes = {k: v.shape[1:] for k, v in inputs.items()}
        decisions = [self._decide(i, p, w, k, shapes) for p, w, k in zip(ps, ws, keys)]
        reuses = [0] * b  # each row's reuse count after this call
        for r, d in enumerate(decisions):
            if d.action == REUSE:
                entry = self.bank.get(i, keys[r])
                entry.uses += 1
                reuses[r] = entry.uses
        self._fresh = []  # the rows that run store their residuals once all rows are done
        result = self._apply(i, inputs, decisions, keys, run, inplace)
        self.bank.put_block(i, self._fresh)  # after the reuses read theirs; kept or dropped as one block
        self.bank.settle(i, keys)
        self._prefetch(i, keys, next(iter(inputs.values())))
        self._account(i, inputs, decisions, keys, ps, reuses)
        return result

    def _apply(self, i, inputs: Streams, decisions, keys, run: RunFn, inplace: bool) -> Streams:
        b = len(decisions)
        groups: dict[tuple[int, float], list[int]] = {}
        for r, d in enumerate(decisions):  # a NOCACHE row runs: it joins the runs at its width
            act = RUN if d.action in RAN else d.action
            groups.setdefault((act, d.width if act == RUN else 0.0), []).append(r)
        if len(groups) == 1:  # the common case: one decision for the whole batch, no row copies
            (action, width), = groups
            return self._act(i, inputs, None, list(range(b)), action, width, keys, run, inplace)
        result = {k: v.clone() for k, v in inputs.items()}  # skipped rows stay as they are
        for (action, width), rows in groups.items():
            if action == SKIP:
                continue
            idx = torch.tensor(rows, device=next(iter(inputs.values())).device)
            part = self._act(i, inputs, idx, rows, action, width, keys, run, inplace)
            for k in result:
                result[k].index_copy_(0, idx, part[k])
        return result

    def _act(self, i, inputs: Streams, idx: Tensor | None, rows: list[int], action: int, width: float, keys,
             run: RunFn, inplace: bool) -> Streams:
        """Apply one action to rows `rows` (idx: the same as a tensor, None = all rows) of `inputs`.

        `inputs` is never changed here: a block that adds into its input in place (inplace=True) gets
        a copy, so the residual out - in is taken against the block's true input.
        """
        x = inputs if idx is None else {k: v.index_select(0, idx) for k, v in inputs.items()}  # [b, L, D]
        if action == SKIP:
            return x
        if action == REUSE:
            return {k: v + torch.stack([self.bank.take(i, keys[r], v, k) for r in rows]) for k, v in x.items()}
        x_in = {k: v.clone() for k, v in x.items()} if inplace and idx is None else x  # row copies are private
        out = run(x_in, idx, width)
        if self.caching:
            ref = {k: v.index_select(0, idx) for k, v in inputs.items()} if inplace and idx is not None else x
            with torch.no_grad():
                delta = {k: (out[k] - ref[k]).detach() for k in x}
            self._fresh.extend((keys[r], {k: v[j] for k, v in delta.items()}) for j, r in enumerate(rows))
        return out

    def _account(self, i: int, inputs: Streams, decisions, keys, ps, reuses) -> None:
        spec, rec, f = self.specs[i], self.record, self.record.flops
        tokens = {k: v.shape[1] for k, v in inputs.items()}
        attn, mlp_full = spec.attn_flops(tokens), spec.mlp_flops(tokens, 1.0)
        self._dense[i] = (attn, mlp_full)
        self._keys.update(dict.fromkeys(keys))
        if i not in rec.costs:  # one sample's cost: run at each width, and one router call
            rec.costs[i] = [attn + spec.mlp_flops(tokens, w) for w in self.routers.config.widths]
            rec.router_costs[i] = self.routers[i].flops(sum(tokens.values()))
        router_flops = rec.router_costs[i]
        for r, (d, p) in enumerate(zip(decisions, ps)):
            f["dense_attn"] += attn
            f["dense_mlp"] += mlp_full
            f["router"] += router_flops
            if d.action in RAN:
                f["exec_attn"] += attn
                f["exec_mlp"] += spec.mlp_flops(tokens, d.width)
            rec.add(self.step, i, keys[r][0], keys[r][1], p, d.width, d.action, reuses[r])


def run_stack(run_state: ElasticRun, blocks: Sequence[RunFn], inputs: Streams, cond: Tensor,
              row_keys: Sequence[RowKey] | None = None,
              router_tokens: Callable[[Streams], Sequence[Tensor]] | None = None) -> Streams:
    """Algorithm 1 over a plain stack of blocks for the current step."""
    x = inputs
    for i, blk in enumerate(blocks):
        toks = router_tokens(x) if router_tokens is not None else None
        x = run_state.block(i, x, cond, blk, router_tokens=toks, row_keys=row_keys)
    return x
