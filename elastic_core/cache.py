"""The router-guided residual cache (Algorithm 1, eq. 19): one feature bank per block, stream and sample.

An entry holds the residual x_out - x_in a block produced for ONE sample the last time it ran, per
tensor stream ("img", "txt"), and how many times in a row it has been reused since. Residuals are
differences computed by the engine, never references to a host's output tensors (hosts add into
their outputs in place).

Bytes are counted as held: the sum of the entries' tensor sizes. Residuals of samples that ran
together may share one allocation until each is replaced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

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


class ResidualBank:
    def __init__(self, device: str | torch.device | None = None):
        self.device = None if device is None else torch.device(device)
        self._entries: dict[Key, Entry] = {}
        self.bytes = 0
        self.peak_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, block: int, key: Hashable) -> Entry | None:
        return self._entries.get((block, key))

    def put(self, block: int, key: Hashable, residual: dict[str, Tensor]) -> None:
        """Store a fresh residual for one sample (resets its reuse count)."""
        if self.device is not None:
            residual = {k: v.to(self.device, non_blocking=True) for k, v in residual.items()}
        old = self._entries.get((block, key))
        if old is not None:
            self.bytes -= old.nbytes
        entry = Entry(residual)
        self._entries[(block, key)] = entry
        self.bytes += entry.nbytes
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def take(self, block: int, key: Hashable, like: Tensor, stream: str) -> Tensor:
        """The stored residual of one stream on `like`'s device and dtype. -> [L, D]"""
        return self._entries[(block, key)].residual[stream].to(like.device, like.dtype, non_blocking=True)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
