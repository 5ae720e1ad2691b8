"""Reference DiT blocks in plain torch: an MMDiT double-stream block and a fused single-stream block,
laid out like Flux / Qwen-Image (adaLN modulation, joint attention, tanh-GELU MLP of 4D).

They exist to test and benchmark the engine without a host, and they are the blocks of the toy model.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .blocks import BlockSpec
from .elastic_mlp import MLPLayout, elastic_mlp, masked_mlp, module_weights, project_in, project_out
from .runner import RunFn


def _gelu(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    q, k, v = (rearrange(t, "b l (h d) -> b h l d", h=heads) for t in (q, k, v))
    return rearrange(F.scaled_dot_product_attention(q, k, v), "b h l d -> b l (h d)")


class RefDoubleBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, elastic_streams: Sequence[str] = ("img",)):
        super().__init__()
        self.dim, self.heads, self.hidden = dim, heads, int(dim * mlp_ratio)
        self.elastic_streams = tuple(elastic_streams)
        for s in ("img", "txt"):
            setattr(self, f"{s}_mod", nn.Linear(dim, 6 * dim))
            setattr(self, f"{s}_qkv", nn.Linear(dim, 3 * dim))
            setattr(self, f"{s}_proj", nn.Linear(dim, dim))
            setattr(self, f"{s}_mlp", nn.Sequential(nn.Linear(dim, self.hidden), nn.GELU("tanh"), nn.Linear(self.hidden, dim)))

    def spec(self, name: str) -> BlockSpec:
        return BlockSpec(name, "double", self.dim, self.hidden, elastic_streams=self.elastic_streams, group="double")

    def mlp(self, stream: str, x: Tensor, width: float | Tensor) -> Tensor:
        """width: a ratio (inference: weight slicing) or a [B, M] hidden mask (training: eq. 13)."""
        m = getattr(self, f"{stream}_mlp")
        fc1, fc2, lay = module_weights(m[0]), module_weights(m[2]), MLPLayout(self.hidden)
        if stream not in self.elastic_streams:
            return elastic_mlp(x, fc1, fc2, _gelu, lay, 1.0)
        if isinstance(width, Tensor):
            return masked_mlp(x, fc1, fc2, _gelu, lay, width)
        return elastic_mlp(x, fc1, fc2, _gelu, lay, width)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, width: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
        """img: [B, Li, D], txt: [B, Lt, D], vec: [B, D] -> new (img, txt)."""
        mi = self.img_mod(F.silu(vec)).chunk(6, dim=-1)  # 6 x [B, D]
        mt = self.txt_mod(F.silu(vec)).chunk(6, dim=-1)
        qi, ki, vi = self.img_qkv(_modulate(img, mi[0], mi[1])).chunk(3, dim=-1)
        qt, kt, vt = self.txt_qkv(_modulate(txt, mt[0], mt[1])).chunk(3, dim=-1)
        a = _attention(torch.cat([qt, qi], 1), torch.cat([kt, ki], 1), torch.cat([vt, vi], 1), self.heads)
        at, ai = a[:, : txt.shape[1]], a[:, txt.shape[1]:]
        img = img + mi[2].unsqueeze(1) * self.img_proj(ai)
        txt = txt + mt[2].unsqueeze(1) * self.txt_proj(at)
        img = img + mi[5].unsqueeze(1) * self.mlp("img", _modulate(img, mi[3], mi[4]), width)
        txt = txt + mt[5].unsqueeze(1) * self.mlp("txt", _modulate(txt, mt[3], mt[4]), width)
        return img, txt


class RefSingleBlock(nn.Module):
    """Flux-style single block: linear1 D -> [qkv 3D; mlp M], linear2 [attn D; mlp M] -> D."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.dim, self.heads, self.hidden = dim, heads, int(dim * mlp_ratio)
        self.mod = nn.Linear(dim, 3 * dim)
        self.linear1 = nn.Linear(dim, 3 * dim + self.hidden)
        self.linear2 = nn.Linear(dim + self.hidden, dim)
        self.layout = MLPLayout(self.hidden, in_prefix=3 * dim, out_prefix=dim)

    def spec(self, name: str) -> BlockSpec:
        return BlockSpec(name, "single", self.dim, self.hidden, group="single")

    def forward(self, x: Tensor, vec: Tensor, width: float = 1.0) -> Tensor:
        """x: [B, L, D] joint tokens, vec: [B, D]."""
        shift, scale, gate = self.mod(F.silu(vec)).chunk(3, dim=-1)
        k = self.layout.channels(width)
        y = project_in(_modulate(x, shift, scale), self.linear1.weight, self.linear1.bias, self.layout, k)
        qkv, h = y[..., : 3 * self.dim], y[..., 3 * self.dim:]  # [B, L, 3D], [B, L, k]
        a = _attention(*qkv.chunk(3, dim=-1), self.heads)
        out = project_out(torch.cat([a, _gelu(h)], dim=-1), self.linear2.weight, self.linear2.bias, self.layout, k)
        return x + gate.unsqueeze(1) * out


def _rows(t: Tensor, rows: Tensor | None) -> Tensor:
    return t if rows is None else t.index_select(0, rows)


def double_run_fn(block: RefDoubleBlock, vec: Tensor) -> RunFn:
    """The engine's view of a double block: streams {"img", "txt"}; vec is sliced to the rows."""
    def run(x, rows, width):
        img, txt = block(x["img"], x["txt"], _rows(vec, rows), width)
        return {"img": img, "txt": txt}
    return run


def plain_stack(blocks: Sequence[RefDoubleBlock], img: Tensor, txt: Tensor, vec: Tensor,
                widths: Sequence[float] | None = None, skip: Sequence[int] = ()) -> tuple[Tensor, Tensor]:
    """The dense reference: run every block (except `skip`) in order."""
    for i, blk in enumerate(blocks):
        if i not in skip:
            img, txt = blk(img, txt, vec, 1.0 if widths is None else widths[i])
    return img, txt


@torch.no_grad()
def randomize_(module: nn.Module, std: float = 0.02, generator: torch.Generator | None = None) -> nn.Module:
    """Small random weights (the blocks' default init makes residuals large at depth)."""
    for p in module.parameters():
        p.normal_(0.0, std, generator=generator)
    return module
