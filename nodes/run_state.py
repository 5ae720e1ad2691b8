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


class StreamNames:
    """Readable, stable stream names for the cond chunks of one run: "cond", "uncond", then "cond2"...

    ComfyUI marks each chunk of a model call as cond (0) or uncond (1) and gives each conditioning its
    own uuid. Two conds of one type (ConditioningCombine, areas, ControlNet) may share a call or run in
    separate calls; keyed by uuid, each keeps its own name, hence its own residual bank and K counter.
    """

    def __init__(self):
        self._by_uuid: dict = {}
        self._count: dict[str, int] = {}

    def _new(self, mark: int) -> str:
        base = STREAMS.get(int(mark), f"chunk{int(mark)}")
        self._count[base] = self._count.get(base, 0) + 1
        return base if self._count[base] == 1 else f"{base}{self._count[base]}"

    def chunks(self, cond_or_uncond, uuids) -> list[str]:
        marks = list(cond_or_uncond or [0])
        if uuids is None or len(uuids) != len(marks):  # no identity given: name chunks by position
            local = StreamNames()
            return [local._new(m) for m in marks]
        names = []
        for m, u in zip(marks, uuids):
            if u not in self._by_uuid:
                self._by_uuid[u] = self._new(m)
            names.append(self._by_uuid[u])
        return names

    def row_keys(self, to: dict, batch: int) -> list[tuple[str, int]]:
        """(stream, sample) per row: the batch holds one equal chunk per entry of cond_or_uncond."""
        names = self.chunks(to.get("cond_or_uncond"), to.get("uuids"))
        if batch % len(names):  # not ComfyUI's chunk layout: one stream, rows are samples
            names = ["cond"]
        per = batch // len(names)
        return [(names[r // per], r % per) for r in range(batch)]


class RunState:
    recomputes = False  # sampling calls each block once, at once

    def __init__(self, patch, sigmas: torch.Tensor, model_sampling):
        self.patch = patch
        self.sample_sigmas = [float(s) for s in sigmas]
        self.num_steps = max(len(self.sample_sigmas) - 1, 1)
        self.run = ElasticRun(patch.routers, patch.specs, patch.policy, self.num_steps,
                              meta={"family": patch.adapter.family, "node_id": patch.node_id,
                                    "routers": patch.ckpt.path})
        config = patch.policy.config  # the cache window in percent of the noise schedule, as sigmas
        self.start_sigma = float(model_sampling.percent_to_sigma(config.cache_start))
        self.end_sigma = float(model_sampling.percent_to_sigma(config.cache_end))
        self._sigmas_seen = None
        self.names = StreamNames()
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
        in_window = self._in_window(sigma)
        if self._live_step is not None and step != self._live_step:
            self.live.step_done(self.run.record, self._live_step)
        self._live_step = step
        self.run.begin_step(step, sigma, in_window)

    def _in_window(self, sigma: float) -> bool:
        tol = 1e-5 * max(abs(sigma), 1e-3)
        return self.start_sigma + tol >= sigma > self.end_sigma

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
                              row_keys=self.names.row_keys(to, batch), inplace=adapter.inplace)

    def finish(self, completed: bool = False) -> RunRecord:
        """completed: the sampler went through every step. Steps it went through that never reached the
        model (a step cache in front of the pack answered) are then recorded as every block skipped; a
        cancelled or failed run records only what ran."""
        if completed:
            self.run.unreached({j: (s, self._in_window(s)) for j, s in enumerate(self.sample_sigmas[:self.num_steps])})
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
