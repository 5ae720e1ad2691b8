"""Per-sampling-run state: the engine's ElasticRun, plus what ComfyUI's hook args mean to it.

Created by the OUTER_SAMPLE wrapper for one run and finished in its `finally`. Steps are counted on
the run's sigma schedule (a Heun-type sampler that evaluates a sigma twice stays on one step); the
cache window is counted on the noise schedule, as ComfyUI's own caches do.
"""
from __future__ import annotations

import time

import torch

from ..elastic_core.runner import ElasticRun
from ..elastic_core.stats import RunRecord
from .live import LiveFeed

STREAMS = {0: "cond", 1: "uncond"}  # ComfyUI's COND / UNCOND chunk marks


def row_keys(cond_or_uncond, batch: int) -> list[tuple[str, int]]:
    """(stream, sample) per row: the batch holds len(cond_or_uncond) equal chunks."""
    marks = list(cond_or_uncond or [0])
    if batch % len(marks):
        marks = [0]
    per, names, seen = batch // len(marks), [], {}
    for m in marks:
        base = STREAMS.get(int(m), f"chunk{int(m)}")
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}{seen[base]}")
    return [(names[r // per], r % per) for r in range(batch)]


class RunState:
    recomputes = False  # sampling calls each block once, at once

    def __init__(self, patch, sigmas: torch.Tensor, model_sampling):
        self.patch = patch
        self.sample_sigmas = [float(s) for s in sigmas]
        self.num_steps = max(len(self.sample_sigmas) - 1, 1)
        self.run = ElasticRun(patch.routers, patch.specs, patch.config, self.num_steps, plan=patch.plan,
                              meta={"family": patch.adapter.family, "node_id": patch.node_id,
                                    "routers": patch.ckpt.path})
        self.start_sigma = float(model_sampling.percent_to_sigma(patch.window.start_percent))
        self.end_sigma = float(model_sampling.percent_to_sigma(patch.window.end_percent))
        self._sigmas_seen = None
        self.live = LiveFeed(patch.node_id)
        self._live_step: int | None = None
        self._router_home: torch.device | None = None
        self._t0 = time.perf_counter()

    def _sync_step(self, to: dict) -> None:
        sig = to.get("sigmas")
        if sig is self._sigmas_seen and sig is not None:
            return
        self._sigmas_seen = sig
        sigma = float(sig.reshape(-1)[0]) if sig is not None else self.sample_sigmas[0]
        tol = 1e-5 * max(abs(sigma), 1e-3)
        step = max([j for j, s in enumerate(self.sample_sigmas[:-1]) if s >= sigma - tol] or [0])
        caching = self.start_sigma + tol >= sigma > self.end_sigma
        if self._live_step is not None and step != self._live_step:
            self.live.step_done(self.run.record, self._live_step)
        self._live_step = step
        self.run.begin_step(step, sigma, caching=caching)

    def _routers_to(self, device: torch.device) -> None:
        routers = self.patch.routers
        home = next(routers.parameters()).device
        if home != device:
            self._router_home = self._router_home or home
            routers.to(device)

    def block(self, i: int, args: dict, original) -> dict:
        to = args.get("transformer_options", {})
        self._sync_step(to)
        adapter, ref, slot = self.patch.adapter, self.patch.refs[i], self.patch.slots[i]
        x = adapter.streams(ref, args)
        batch = next(iter(x.values())).shape[0]
        self._routers_to(next(iter(x.values())).device)

        def run_fn(xr, rows, width):
            slot.width = width if width < 1.0 else None
            try:
                return adapter.call(ref, args, original, xr, rows, batch)
            finally:
                slot.width = None

        return self.run.block(i, x, adapter.cond(ref, args), run_fn, router_tokens=adapter.router_tokens(ref, args),
                              row_keys=row_keys(to.get("cond_or_uncond"), batch), clone_inputs=adapter.inplace)

    def finish(self) -> RunRecord:
        if self._router_home is not None:  # routers leave the GPU with the run
            self.patch.routers.to(self._router_home)
        record = self.run.finish()
        if self._live_step is not None:
            self.live.step_done(record, self._live_step)
        self.live.done(record)
        return record

    def log_line(self, record: RunRecord) -> str:
        steps = len(record.steps)
        wall = time.perf_counter() - self._t0
        rate = f"{steps / wall:.2f} it/s" if wall > 0 and steps else "n/a"
        return f"{record.summary()}, measured {rate} over {steps} steps"
