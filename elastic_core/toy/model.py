"""A small multi-modal DiT for the toy world: patch tokens and caption tokens through double-stream
blocks (elastic_core.reference), trained with rectified flow as SD3 / Flux are. Small enough to train
on a CPU.

x_t = (1 - t) x_0 + t eps, the model predicts v = eps - x_0. Training draws t logit-normal and drops
the caption (the all-PAD empty prompt) for a share of samples; sampling integrates t from 1 to 0 on
the shifted schedule t' = s t / (1 + (s - 1) t) (SD3's timestep shift) with classifier-free guidance:
v = v_uncond + g (v_cond - v_uncond), the two rows of one sample in one batch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..blocks import BlockSpec
from ..reference import RefDoubleBlock
from .world import PER_OBJECT, VOCAB, WorldSpec


@dataclass(frozen=True)
class ToyConfig:
    image: int = 32
    patch: int = 4
    dim: int = 128
    heads: int = 4
    depth: int = 12
    caption: int = WorldSpec().tokens  # caption length in ints: background pair, then 7 per object
    vocab: int = VOCAB
    shift: float = 3.0  # timestep shift of the sampling schedule
    guidance: float = 4.0  # classifier-free guidance scale the model is sampled with

    @property
    def tokens(self) -> int:
        """Text tokens the blocks see: one for the background, one per object (its 7 ints summed)."""
        return 1 + (self.caption - 2) // PER_OBJECT

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of t in [0, 1]. t: [B] -> [B, dim]"""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    a = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([a.cos(), a.sin()], dim=-1)


class ToyDiT(nn.Module):
    def __init__(self, cfg: ToyConfig = ToyConfig()):
        super().__init__()
        self.cfg = cfg
        d, n = cfg.dim, (cfg.image // cfg.patch) ** 2
        self.img_in = nn.Linear(3 * cfg.patch ** 2, d)
        self.img_pos = nn.Parameter(torch.zeros(1, n, d))
        self.txt_in = nn.Embedding(cfg.vocab, d)
        self.txt_pos = nn.Parameter(torch.zeros(1, cfg.tokens, d))
        self.t_in = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(RefDoubleBlock(d, cfg.heads) for _ in range(cfg.depth))
        self.out_mod = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, 3 * cfg.patch ** 2)
        nn.init.normal_(self.img_pos, std=0.02)
        nn.init.normal_(self.txt_pos, std=0.02)
        for blk in self.blocks:  # adaLN-zero: every block starts as the identity
            for s in ("img", "txt"):
                nn.init.zeros_(getattr(blk, f"{s}_mod").weight)
                nn.init.zeros_(getattr(blk, f"{s}_mod").bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def specs(self) -> list[BlockSpec]:
        return [blk.spec(f"blocks.{i}") for i, blk in enumerate(self.blocks)]

    def embed(self, x: Tensor, t: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: [B, 3, S, S], t: [B], tokens: [B, caption] -> img [B, N, D], txt [B, T, D], vec [B, D]"""
        p = self.cfg.patch
        img = self.img_in(rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)) + self.img_pos
        e = self.txt_in(tokens)  # [B, caption, D]: one token per background / object, its attributes summed
        objs = rearrange(e[:, 2:], "b (n k) d -> b n k d", k=PER_OBJECT).sum(2)
        txt = torch.cat([e[:, :2].sum(1, keepdim=True), objs], 1) + self.txt_pos
        return img, txt, self.t_in(timestep_embedding(t, 256))

    def head(self, img: Tensor, vec: Tensor) -> Tensor:
        """img: [B, N, D] -> velocity [B, 3, S, S]"""
        shift, scale = self.out_mod(F.silu(vec)).chunk(2, dim=-1)
        h = F.layer_norm(img, img.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
        p, g = self.cfg.patch, self.cfg.image // self.cfg.patch
        return rearrange(self.out(h), "b (h w) (c p q) -> b c (h p) (w q)", h=g, w=g, p=p, q=p)

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor, widths=None, skip: set[int] = frozenset()) -> Tensor:
        img, txt, vec = self.embed(x, t, tokens)
        for i, blk in enumerate(self.blocks):
            if i not in skip:
                img, txt = blk(img, txt, vec, 1.0 if widths is None else widths[i])
        return self.head(img, vec)


def flow_loss(model: ToyDiT, x0: Tensor, tokens: Tensor, generator: torch.Generator | None = None,
              drop: float = 0.0) -> Tensor:
    """Rectified-flow loss on a batch of clean images; t logit-normal (SD3); a share `drop` of captions
    replaced by the empty one (PAD everywhere) so the model also learns the unconditional branch."""
    b = x0.shape[0]
    t = torch.sigmoid(torch.randn(b, generator=generator))
    eps = torch.randn(x0.shape, generator=generator)
    if drop > 0:
        keep = (torch.rand(b, generator=generator) >= drop)[:, None]
        tokens = torch.where(keep, tokens, torch.zeros_like(tokens))
    xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps
    return F.mse_loss(model(xt, t, tokens), eps - x0)


def schedule(steps: int, shift: float = 1.0) -> Tensor:
    """[steps + 1] times from 1 to 0, shifted toward the noisy end: t' = s t / (1 + (s - 1) t)."""
    t = torch.linspace(1.0, 0.0, steps + 1)
    return shift * t / (1 + (shift - 1) * t)


def guided(model_fn, x: Tensor, t: Tensor, tokens: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance, uncond and cond rows in one batch. model_fn(x [2B], t [2B], tokens [2B])."""
    b = x.shape[0]
    v = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([torch.zeros_like(tokens), tokens]))
    v_u, v_c = v[:b], v[b:]
    return v_u + scale * (v_c - v_u)


@torch.no_grad()
def sample(velocity, noise: Tensor, steps: int, on_step=None, shift: float = 1.0) -> Tensor:
    """Euler from t = 1 (noise) to 0. velocity(x, t[B], step) -> v."""
    x = noise
    ts = schedule(steps, shift)
    for i in range(steps):
        if on_step is not None:
            on_step(i, float(ts[i]))
        v = velocity(x, ts[i].expand(x.shape[0]), i)
        x = x + (ts[i + 1] - ts[i]) * v
    return x
