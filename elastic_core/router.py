"""The per-block router (eqs. 4-6), in two layouts that share the trunk and heads.

- released (RouterConfig.mod_rank None): the authors' `RouteGate`. Submodule names match the released
  checkpoint (`img_mod.1`, `out.0`, `out.2`, `width_head`), so a released router's tensors load with
  their own names. Its modulation Linear(C, 3D) is 98.6 % of the router at D = 3072 (28.3 M of 28.7 M
  parameters), and a third of it (the gate rows) is never used.
- compact (mod_rank r): the same computation with a rank-r modulation, `mod_down` Linear(C, r, no bias)
  then `mod_up` Linear(r, 2D) -> shift, scale. The released form is its full-rank case; r = 32 keeps
  0.70 M parameters at D = 3072. The conditioning the routers read varies in few directions (on the toy,
  a trained released router's shift and scale over all timesteps hold 99.9 % of their variance in
  <= 10 directions), so a low rank loses little.

The forward is the released computation, rearranged without changing its value:
- only shift and scale of the 3-way modulation are used, so only those rows are computed;
- the modulation is folded into the trunk weight per sample (LN(x)(1+scale) + shift) W^T + b =
  LN(x) ((1+scale) * W)^T + (shift W^T + b), which saves a pass over the tokens;
- heads are linear, so mean_tokens(h W) = mean_tokens(h) W: the heads run once per sample;
- the token input may come in parts (text, image) that are never concatenated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import RouterConfig

_ACTS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


@dataclass(frozen=True)
class RouterOutput:
    gate_logit: Tensor  # [B]
    width_logits: Tensor  # [B, S]

    @property
    def p(self) -> Tensor:  # [B] gate probability
        return torch.sigmoid(self.gate_logit)

    @property
    def q(self) -> Tensor:  # [B, S] width distribution
        return torch.softmax(self.width_logits, dim=-1)

    @property
    def width_index(self) -> Tensor:  # [B] argmax of q
        return self.width_logits.argmax(dim=-1)


class Router(nn.Module):
    def __init__(self, config: RouterConfig):
        super().__init__()
        self.config = config
        d, c, h = config.dim, config.cond, config.hidden
        if config.mod_rank is None:
            self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(c, 3 * d))  # shift, scale, (unused)
        else:  # a bias before mod_up would only add to mod_up's bias
            self.mod_down = nn.Linear(c, config.mod_rank, bias=False)
            self.mod_up = nn.Linear(config.mod_rank, 2 * d)  # shift, scale
        self.out = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, 1))  # trunk, gate head
        self.width_head = nn.Linear(h, len(config.widths))

    def forward(self, tokens: Tensor | Sequence[Tensor], cond: Tensor) -> RouterOutput:
        """tokens: [B, L, D] or parts [B, L_k, D] read as their concatenation; cond: [B, C]."""
        parts = [tokens] if isinstance(tokens, Tensor) else [t for t in tokens if t is not None]
        shift, scale = self.modulation(cond)  # [B, D] each
        dtype, d = shift.dtype, self.config.dim
        w0, b0 = self.out[0].weight, self.out[0].bias  # [H, D], [H]
        w_s = w0.unsqueeze(0) * (1.0 + scale).unsqueeze(1)  # [B, H, D]
        b_s = F.linear(shift, w0, b0).unsqueeze(1)  # [B, 1, H]
        act = _ACTS[self.config.activation]
        h_sum, n = None, 0
        for x in parts:  # x: [B, L_k, D]
            xn = F.layer_norm(x.to(dtype), (d,), eps=self.config.ln_eps)
            h = act(torch.baddbmm(b_s, xn, w_s.transpose(1, 2)))  # [B, L_k, H]
            s = h.sum(dim=1)  # [B, H]
            h_sum = s if h_sum is None else h_sum + s
            n += x.shape[1]
        if n == 0:
            raise ValueError("router input has no tokens")
        h_mean = h_sum / n  # [B, H]
        gate = F.linear(h_mean, self.out[2].weight, self.out[2].bias).squeeze(-1)  # [B]
        width = F.linear(h_mean, self.width_head.weight, self.width_head.bias)  # [B, S]
        return RouterOutput(gate, width)

    def modulation(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """cond [B, C] -> shift, scale [B, D], in the router's dtype."""
        d = self.config.dim
        if self.config.mod_rank is None:  # only the shift and scale rows: the third chunk is never used
            w, b = self.img_mod[1].weight, self.img_mod[1].bias
            return F.linear(F.silu(cond.to(w.dtype)), w[: 2 * d], b[: 2 * d]).chunk(2, dim=-1)
        low = F.linear(F.silu(cond.to(self.mod_down.weight.dtype)), self.mod_down.weight)  # [B, r]
        return F.linear(low, self.mod_up.weight, self.mod_up.bias).chunk(2, dim=-1)

    @torch.no_grad()
    def init_full_capacity(self, open_p: float = 0.7, full_width_bias: float = 2.0, std: float = 1e-3,
                           generator: torch.Generator | None = None) -> "Router":
        """Full-capacity init (the released `post_init`): gate open at p = open_p, full width preferred."""
        # torch's default Linear init, drawn from `generator` so a seed fixes the routers
        mod = self.img_mod[1] if self.config.mod_rank is None else self.mod_down
        nn.init.kaiming_uniform_(mod.weight, a=math.sqrt(5), generator=generator)
        if self.config.mod_rank is None:
            nn.init.uniform_(mod.bias, -1.0 / math.sqrt(mod.in_features), 1.0 / math.sqrt(mod.in_features),
                             generator=generator)
        else:  # mod_up's variance 1/r (not torch's 1/(3r)): shift and scale start as large as the released ones
            r, up = self.config.mod_rank, self.mod_up
            nn.init.uniform_(up.weight, -math.sqrt(3.0 / r), math.sqrt(3.0 / r), generator=generator)
            nn.init.uniform_(up.bias, -1.0 / math.sqrt(mod.in_features), 1.0 / math.sqrt(mod.in_features),
                             generator=generator)
        nn.init.kaiming_uniform_(self.out[0].weight, a=math.sqrt(5), generator=generator)
        self.out[0].bias.zero_()
        self.out[2].weight.normal_(0.0, std, generator=generator)
        self.out[2].bias.fill_(math.log(open_p / (1.0 - open_p)))
        self.width_head.weight.normal_(0.0, std, generator=generator)
        self.width_head.bias.zero_()
        self.width_head.bias[-1] = full_width_bias
        return self

    def flops(self, tokens: int) -> float:
        """Multiply-adds x2 of one router call on `tokens` tokens (per sample)."""
        d, c, h, s = self.config.dim, self.config.cond, self.config.hidden, len(self.config.widths)
        r = self.config.mod_rank
        mod = 2.0 * c * 2 * d if r is None else 2.0 * c * r + 2.0 * r * 2 * d
        return mod + 2.0 * d * h + tokens * (8.0 * d + 2.0 * d * h + 2.0 * h) + 2.0 * h * (1 + s)


class RouterSet(nn.Module):
    """One router per block, in block order, plus the names of those blocks."""

    def __init__(self, config: RouterConfig, block_names: Sequence[str]):
        super().__init__()
        if len(set(block_names)) != len(block_names):
            raise ValueError("block names must be unique")
        self.config = config
        self.block_names = tuple(block_names)
        self.routers = nn.ModuleList(Router(config) for _ in block_names)

    def __len__(self) -> int:
        return len(self.routers)

    def __getitem__(self, i: int) -> Router:
        return self.routers[i]

    def init_full_capacity(self, **kw) -> "RouterSet":
        for r in self.routers:
            r.init_full_capacity(**kw)
        return self

    def gate_bias(self) -> Tensor:  # [N] open-ness of each block's gate at zero input
        return torch.stack([r.out[2].bias.detach()[0] for r in self.routers])

