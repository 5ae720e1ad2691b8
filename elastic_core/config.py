"""Frozen configuration for routers and for the inference policy (Algorithm 1).

`ElasticConfig()` is the one place the policy's defaults live (nodes, presets, router files and the
widget read them from here). They reproduce the authors' released Qwen-Image code: tau 0.5, a
borderline band of 0.015 (the code hard-codes [0.5, 0.515]), at most 10 reuses in a row, caching from
the middle of the schedule (step 15 of 30).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import ClassVar

WIDTHS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class RouterConfig:
    """Shape of one block's router (eqs. 4-6)."""

    dim: int  # D: token width of the block input
    cond_dim: int | None = None  # C: width of the conditioning vector (default D)
    hidden: int = 128  # H_r
    widths: tuple[float, ...] = WIDTHS  # S: the MLP width ratios the width head chooses from
    activation: str = "relu"
    ln_eps: float = 1e-6

    def __post_init__(self):
        if self.dim <= 0 or self.hidden <= 0 or (self.cond_dim is not None and self.cond_dim <= 0):
            raise ValueError(f"router dims must be positive, got dim={self.dim} cond_dim={self.cond_dim} hidden={self.hidden}")
        if not self.widths or any(not 0.0 < w <= 1.0 for w in self.widths):
            raise ValueError(f"router widths must lie in (0, 1], got {self.widths}")
        if list(self.widths) != sorted(self.widths):
            raise ValueError(f"router widths must be ascending, got {self.widths}")
        if isinstance(self.ln_eps, bool) or not isinstance(self.ln_eps, (int, float)) or not (
                math.isfinite(self.ln_eps) and self.ln_eps > 0):
            raise ValueError(f"router ln_eps must be a finite number > 0, got {self.ln_eps!r}")
        if self.activation not in ("relu", "gelu", "silu"):
            raise ValueError(f"router activation must be relu, gelu or silu, got {self.activation!r}")
        object.__setattr__(self, "widths", tuple(float(w) for w in self.widths))

    @property
    def cond(self) -> int:
        return self.dim if self.cond_dim is None else self.cond_dim


@dataclass(frozen=True)
class ElasticConfig:
    """The inference policy: thresholds, switches and the cache window.

    The cache window is counted in percent of the noise schedule (0 = pure noise, 1 = clean image),
    as ComfyUI's own caches count it: a step may store or reuse a residual when its point on the
    schedule lies in [cache_start, cache_end). Under ComfyUI's `simple` scheduler 0.5 is step 15 of 30,
    where the released code starts caching. Image-to-image at denoise d starts at 1 - d of the schedule.
    """

    VERSION: ClassVar[int] = 2  # 2: the cache window in percent of the noise schedule

    tau: float = 0.5
    delta: float = 0.015
    max_reuse: int = 10  # K
    skip: bool = True
    width: bool = True
    cache: bool = True
    cache_start: float = 0.5
    cache_end: float = 1.0
    cache_device: str | None = None  # None: keep residuals on the device they were computed on

    def __post_init__(self):
        for name in ("tau", "delta", "cache_start", "cache_end"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if isinstance(self.max_reuse, bool) or not isinstance(self.max_reuse, int):
            raise ValueError(f"max_reuse (K) must be a whole number, got {self.max_reuse!r}")
        for name in ("skip", "width", "cache"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.cache_device is not None and not isinstance(self.cache_device, str):
            raise ValueError(f"cache_device must be a device name or None, got {self.cache_device!r}")
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"tau must lie in [0, 1], got {self.tau}")
        if not 0.0 <= self.delta <= 1.0:
            raise ValueError(f"delta must lie in [0, 1], got {self.delta}")
        if self.max_reuse < 0:
            raise ValueError(f"max_reuse (K) must be >= 0, got {self.max_reuse}")
        if not 0.0 <= self.cache_start <= self.cache_end <= 1.0:
            raise ValueError(
                f"cache window must satisfy 0 <= start <= end <= 1, got [{self.cache_start}, {self.cache_end}]")

    def with_(self, **changes) -> "ElasticConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {"version": self.VERSION, **asdict(self)}


# The paper's stated settings (its section 4.1), one choice away from the released-code defaults. The
# released code's band is 0.015; the paper gives 0.1 / 0.15 for routers trained at its rho values
# (docs/nodes.md, "Presets").
PAPER_PRESETS = {
    "released": ElasticConfig(),
    "qwen-image-base": ElasticConfig(delta=0.1, max_reuse=5),
    "qwen-image-turbo": ElasticConfig(delta=0.15, max_reuse=10),
    "flux-dev": ElasticConfig(delta=0.1, max_reuse=3),
    "hunyuan3d-3.0": ElasticConfig(delta=0.15, max_reuse=5),
}

