"""What the engine knows of a block: its name, kind, widths, and its cost in FLOPs.

Costs count multiply-adds x2 of the matrix products (projections, attention scores and values,
MLP); norms and elementwise work are left out, as is usual for DiT FLOP counts.
"""
from __future__ import annotations

from dataclasses import dataclass

from .elastic_mlp import MLPLayout


@dataclass(frozen=True)
class BlockSpec:
    name: str  # e.g. "double_blocks.3"
    kind: str  # "double": separate img / txt streams, joint attention; "single": one joint stream
    dim: int  # D
    mlp_hidden: int  # M
    gated: bool = False  # SwiGLU-type MLP (three matrices)
    elastic_streams: tuple[str, ...] = ("img",)  # streams whose MLP width the router may cut
    group: str = ""  # display group, e.g. "double" / "single"

    def __post_init__(self):
        if self.kind not in ("double", "single"):
            raise ValueError(f"block kind must be 'double' or 'single', got {self.kind!r}")
        if self.dim <= 0 or self.mlp_hidden <= 0:
            raise ValueError(f"block {self.name}: dims must be positive")

    @property
    def layout(self) -> MLPLayout:
        if self.kind == "single":
            return MLPLayout(self.mlp_hidden, gated=self.gated, in_prefix=3 * self.dim, out_prefix=self.dim)
        return MLPLayout(self.mlp_hidden, gated=self.gated)

    def attn_flops(self, tokens: dict[str, int]) -> float:
        """Attention part for one sample: qkv and output projections plus scores and values."""
        d = self.dim
        n = sum(tokens.values())
        return n * 2.0 * d * 4 * d + 4.0 * n * n * d

    def mlp_flops(self, tokens: dict[str, int], ratio: float = 1.0) -> float:
        """MLP part for one sample at width ratio (only elastic streams are cut)."""
        mats = 3 if self.gated else 2
        k = self.layout.channels(ratio)
        total = 0.0
        for stream, n in tokens.items():
            hidden = k if (self.kind == "single" or stream in self.elastic_streams) else self.mlp_hidden
            total += n * 2.0 * self.dim * hidden * mats
        return total

