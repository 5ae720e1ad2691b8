"""The router-guided residual cache (Algorithm 1, eq. 19): one feature bank per block, stream and sample.

An entry holds the residual x_out - x_in a block produced for ONE sample the last time it ran, per
tensor stream ("img", "txt"), and how many times in a row it has been reused since. Residuals are
differences computed by the engine, never references to a host's output tensors (hosts add into
their outputs in place).

Bytes are counted as held: the sum of the entries' tensor sizes. Residuals of samples that ran
together may share one allocation until each is replaced.

A budget (bytes, None: no limit) caps what the bank holds. Which blocks' residuals to keep is the
policy's choice (`Policy.admit`, from each block's last gate probabilities); a residual the budget did
not keep is remembered as lost, so that the runner can tell a run caused by the budget from an
ordinary one.

With a home device (`cache_device`), residuals live there and travel through a `Mover`; the next
borderline block's residuals are fetched ahead of their use (`prefetch`). Only the Mover's copies
differ between CUDA and CPU: the bank's logic is the same code on both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Sequence

import torch
from torch import Tensor

Key = tuple[int, Hashable]  # (block index, row key such as ("cond", 0))


@dataclass
class Entry:
    residual: dict[str, Tensor]  # stream -> [L, D] (no batch dim)
    uses: int = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.residual.values())

    def fits(self, shapes: dict[str, torch.Size]) -> bool:
        """Whether this residual can be added to inputs of these per-sample shapes."""
        return self.residual.keys() == shapes.keys() and all(self.residual[k].shape == s for k, s in shapes.items())


class Mover:
    """Copies residuals to the cache's home and back. Where CUDA is present and the home is the CPU:
    pinned host buffers and a side stream, so copies overlap the blocks' compute. Elsewhere plain
    `.to` copies; `ready` is then the identity."""

    def __init__(self, home: torch.device):
        self.home = home
        self._streams: dict[torch.device, object] = {}  # one side stream per CUDA device

    def _cuda(self, t: Tensor) -> bool:
        return self.home.type == "cpu" and t.is_cuda

    def _side(self, device: torch.device):
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device)
        return self._streams[device]

    def store(self, t: Tensor) -> Tensor:
        """t [L, D] on its home; a device tensor is copied into a pinned buffer on the side stream."""
        if not self._cuda(t):
            return t.to(self.home)
        side = self._side(t.device)
        side.wait_stream(torch.cuda.current_stream(t.device))  # t is computed before it is copied
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        with torch.cuda.stream(side):
            buf.copy_(t, non_blocking=True)
        t.record_stream(side)  # the allocator keeps t until the copy is done
        return buf  # read only by `fetch`, on the same side stream: ordered after this copy

    def fetch(self, t: Tensor, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, object]:
        """Start copying t to (device, dtype). -> (tensor, event to wait for, or None)."""
        if not (device.type == "cuda" and self.home.type == "cpu"):
            return t.to(device, dtype), None
        side = self._side(device)  # no wait on the compute stream: this copy runs beside it
        with torch.cuda.stream(side):  # after `store`'s copy of t, which ran on this same stream
            out = t.to(device, non_blocking=True).to(dtype)
            done = side.record_event()
        return out, done

    @staticmethod
    def ready(t: Tensor, done) -> Tensor:
        """t, usable on the current stream once `fetch`'s copy is done."""
        if done is not None:
            torch.cuda.current_stream(t.device).wait_event(done)
            t.record_stream(torch.cuda.current_stream(t.device))  # made on the side stream, used here
        return t


class ResidualBank:
    def __init__(self, device: str | torch.device | None = None, budget: int | None = None, policy=None):
        """budget: bytes the bank may hold (None: no limit); policy: chooses what to keep under it."""
        self.device = None if device is None else torch.device(device)
        self.mover = None if self.device is None else Mover(self.device)
        self.budget, self.policy = budget, policy
        self._entries: dict[Key, Entry] = {}
        self._ahead: dict[Key, dict[str, tuple[Tensor, object]]] = {}  # prefetched copies, per entry
        self.last_p: dict[Key, float] = {}  # each block's gate probability per row, when last decided
        self.lost: dict[Key, int] = {}  # residuals the budget did not keep -> their reuse count then
        self.bytes = self.peak_bytes = self.stored_bytes = self.read_bytes = 0
        self.prefetched = self.prefetch_hits = 0  # residual tensors fetched ahead; of those, read by a reuse

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, block: int, key: Hashable) -> Entry | None:
        return self._entries.get((block, key))

    def _drop(self, k: Key) -> None:
        self.bytes -= self._entries.pop(k).nbytes
        self._ahead.pop(k, None)

    def _distance(self, k: Key, uses: int) -> float:
        return self.policy.distance(self.last_p.get(k, 0.0), uses)

    def _room_for(self, block: int, keys: Sequence[Hashable], nbytes: int) -> bool:
        """Make room for a block call's new residuals under the budget; False: do not keep them.

        The unit kept or dropped is a block: all its rows (cond and uncond, samples) together, judged by
        the row likeliest to be reused. Split, one half of a guided pair would reuse a stale residual
        while the other ran fresh, and guidance amplifies that difference."""
        if self.budget is None:
            return True
        units: dict[int, list] = {}  # block -> [distance, bytes]
        for (b, key), e in self._entries.items():
            if b != block:  # the block's own other rows stay: it is the one being admitted
                u = units.setdefault(b, [math.inf, 0])
                u[0], u[1] = min(u[0], self._distance((b, key), e.uses)), u[1] + e.nbytes
        new = min(self._distance((block, k), 0) for k in keys)
        evict = self.policy.admit(new, nbytes, [(b, d, n) for b, (d, n) in units.items()], self.budget - self.bytes)
        if evict is None:
            return False
        for k in [k for k in self._entries if k[0] in set(evict)]:
            self.lost[k] = self._entries[k].uses
            self._drop(k)
        return True

    def put(self, block: int, key: Hashable, residual: dict[str, Tensor]) -> None:
        """Store a fresh residual for one sample (resets its reuse count), if the budget keeps it."""
        self.put_block(block, [(key, residual)])

    def put_block(self, block: int, items: Sequence[tuple[Hashable, dict[str, Tensor]]]) -> None:
        """Store the fresh residuals of one block call, [(row key, {stream: [L, D]})], kept or dropped
        together under the budget."""
        if not items:
            return
        for key, _ in items:  # the block ran again for these rows: their old residuals are never read
            if (block, key) in self._entries:
                self._drop((block, key))
        nbytes = sum(t.numel() * t.element_size() for _, r in items for t in r.values())
        kept = self._room_for(block, [key for key, _ in items], nbytes)
        for key, residual in items:
            if not kept:
                self.lost[(block, key)] = 0
                continue
            self.lost.pop((block, key), None)
            if self.mover is not None:
                residual = {s: self.mover.store(v) for s, v in residual.items()}
            entry = self._entries[(block, key)] = Entry(residual)
            self.bytes += entry.nbytes
            self.stored_bytes += entry.nbytes
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def prefetch(self, block: int, keys: Sequence[Hashable], device: torch.device, dtype: torch.dtype) -> int:
        """Start fetching block's residuals of these rows to (device, dtype). -> how many tensors started."""
        n = 0
        for key in keys:
            k = (block, key)
            entry = self._entries.get(k)
            if entry is None or self.mover is None or k in self._ahead:
                continue
            self._ahead[k] = {s: self.mover.fetch(v, device, dtype) for s, v in entry.residual.items()}
            n += len(entry.residual)
        self.prefetched += n
        return n

    def take(self, block: int, key: Hashable, like: Tensor, stream: str) -> Tensor:
        """The stored residual of one stream on `like`'s device and dtype. -> [L, D]"""
        k = (block, key)
        t = self._entries[k].residual[stream]
        self.read_bytes += t.numel() * t.element_size()
        ahead = self._ahead.get(k, {}).pop(stream, None)
        if ahead is not None and ahead[0].device == like.device and ahead[0].dtype == like.dtype:
            self.prefetch_hits += 1
            return Mover.ready(*ahead)
        if self.mover is not None:
            return Mover.ready(*self.mover.fetch(t, like.device, like.dtype))
        return t.to(like.device, like.dtype, non_blocking=True)

    def settle(self, block: int, keys: Sequence[Hashable]) -> None:
        """Block `block` has been decided for these rows: prefetched copies it did not use are freed."""
        for key in keys:
            self._ahead.pop((block, key), None)

    def clear(self) -> None:
        self._entries.clear()
        self._ahead.clear()
        self.last_p.clear()
        self.lost.clear()
        self.bytes = 0


def full_size_bytes(blocks: int, tokens: int, dim: int, rows: int, itemsize: int = 2) -> int:
    """What an unlimited cache holds at most: one residual per block and row (stream x sample), each
    [tokens, dim] (a block's image and text streams together; bf16: itemsize 2). The bound is reached
    when every block runs once inside the cache window; skipped blocks store nothing."""
    return blocks * tokens * dim * itemsize * rows
