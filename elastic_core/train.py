"""Router training (eqs. 7-17): straight-through gates and width masks, L = L_perf + lambda (L_gating + L_width).

The host supplies L_perf: the paper's flow-matching loss, or (no data set needed) the distance between
the elastic model's prediction and the same model's dense prediction (`distill_loss`). Every block
runs in training (masked, not sliced), so gradients reach every router:
    g = 1[p >= tau] + p - sg(p);   x_out = x + g (B(x; m) - x);   m = m_hard + m_soft - sg(m_soft)
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .distributed import data_parallel, global_sum, world
from .router import RouterOutput, RouterSet

Streams = dict[str, Tensor]
TrainBlockFn = Callable[[Streams, Tensor], Streams]  # (inputs, hidden mask [B, M]) -> outputs


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    lr: float = 1e-3
    rho_g: float = 0.5  # target mean gate probability
    rho_w: float = 0.6  # target mean width ratio of the blocks that run
    lam: float = 1.0  # lambda
    tau: float = 0.5
    end_to_end: bool = False  # train the backbone too (the paper); default: routers only
    grad_checkpoint: bool = False
    backbone_lr: float | None = None  # end to end: the backbone's learning rate (None: lr)
    backbone_warmup: int = 0  # end to end: the backbone's learning rate ramps up linearly over these steps
    # Gate estimator. 0 / 1 / 1: the plain straight-through gate (eq. 7). gate_noise > 0 adds logistic
    # noise to the gate logit in training (a Gumbel-sigmoid / hard-concrete style stochastic gate):
    # a gate near tau then opens and closes at random, which costs loss, so training pushes it to
    # commit. The temperature anneals geometrically from temperature_start to temperature_end.
    gate_noise: float = 0.0
    temperature_start: float = 1.0
    temperature_end: float = 1.0
    train_width: bool = True  # False: the width head is left out (every block trains at full width)

    def temperature(self, step: int) -> float:
        """The gate temperature at a training step (geometric from start to end over `steps`)."""
        frac = min(max(step / max(self.steps - 1, 1), 0.0), 1.0)
        return self.temperature_start * (self.temperature_end / self.temperature_start) ** frac


@dataclass
class Aux:
    """What the routers said in one training forward, per block: [N, B] each."""
    p: list[Tensor]
    r: list[Tensor]  # expected width ratio sum_j q_j S_j
    g_hard: list[Tensor]


def gate(out: RouterOutput, tau: float, noise: float = 0.0, temperature: float = 1.0,
         generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Straight-through gate (eq. 7). -> g [B] (forward: 0/1), hard [B]

    noise > 0: logistic noise of that scale on the logit (training only); temperature divides the
    noisy logit measured from tau's logit, so the decision stays `logit + noise >= logit(tau)`."""
    if noise == 0.0 and temperature == 1.0:
        p = out.p
    else:
        logit = out.gate_logit
        if noise > 0.0:
            u = torch.rand(logit.shape, generator=generator, dtype=logit.dtype).clamp(1e-6, 1 - 1e-6).to(logit.device)
            logit = logit + noise * (u.log() - (-u).log1p())
        t0 = math.log(tau / (1.0 - tau)) if 0.0 < tau < 1.0 else 0.0
        p = torch.sigmoid((logit - t0) / temperature + t0)
    hard = (p >= tau).to(p.dtype)
    return hard + p - p.detach(), hard


def width_mask(out: RouterOutput, widths: Sequence[float], hidden: int) -> tuple[Tensor, Tensor]:
    """Straight-through prefix mask over hidden channels (eq. 13). -> m [B, M], r [B]"""
    q = out.q  # [B, S]
    ks = [max(1, int(hidden * w + 1e-9)) for w in widths]
    masks = torch.zeros(len(widths), hidden, dtype=q.dtype, device=q.device)
    for j, k in enumerate(ks):
        masks[j, :k] = 1
    soft = q @ masks  # [B, M]
    hard = F.one_hot(q.argmax(-1), len(widths)).to(q.dtype) @ masks
    r = q @ torch.tensor(widths, dtype=q.dtype, device=q.device)
    return hard + soft - soft.detach(), r


def route(router, tokens, cond: Tensor, recompute: bool = False) -> RouterOutput:
    """One router call in training. recompute: nothing of the router's own is kept for the backward
    pass (its fp32 normalised tokens [B, L, D], twice, and its hidden activations [B, L, H]); it runs
    again there, one router at a time. Its inputs, the block's input streams, are what block
    checkpointing keeps anyway, so with both on a block's whole saved state is its input."""
    if not recompute:
        return router(tokens, cond)
    return checkpoint(router, tokens, cond, use_reentrant=False)


def elastic_forward(routers: RouterSet, blocks: Sequence[TrainBlockFn], hidden: Sequence[int], x: Streams,
                    cond: Tensor, tau: float, router_tokens: Callable[[Streams], list[Tensor]],
                    grad_checkpoint: bool = False, noise: float = 0.0, temperature: float = 1.0,
                    width: bool = True) -> tuple[Streams, Aux]:
    """The differentiable elastic stack: every block runs, masked; gates mix output and input.
    noise / temperature: the gate estimator (see `gate`); width False runs every block at full width."""
    aux = Aux([], [], [])
    for i, blk in enumerate(blocks):
        out = route(routers[i], router_tokens(x), cond, grad_checkpoint)
        g, hard = gate(out, tau, noise, temperature)
        if width:
            m, r = width_mask(out, routers.config.widths, hidden[i])
        else:
            m, r = torch.ones(g.shape[0], hidden[i], dtype=g.dtype, device=g.device), torch.ones_like(g)
        y = checkpoint(blk, x, m, use_reentrant=False) if grad_checkpoint else blk(x, m)
        x = {k: v + g.view(-1, *([1] * (v.dim() - 1))) * (y[k] - v) for k, v in x.items()}
        aux.p.append(out.p)
        aux.r.append(r)
        aux.g_hard.append(hard)
    return x, aux


def budget_losses(aux: Aux, rho_g: float, rho_w: float) -> tuple[Tensor, Tensor]:
    """L_gating = (mean p - rho_g)^2; L_width = (mean r over blocks that run - rho_w)^2 (eqs. 14-15)."""
    p, r, run = torch.stack(aux.p), torch.stack(aux.r), torch.stack(aux.g_hard)  # [N, B]
    if world()[1] > 1:  # data parallel: the means over the GLOBAL batch (distributed.global_sum)
        p_mean = global_sum(p.sum()) / global_sum(torch.tensor(float(p.numel()), device=p.device))
        r_bar = global_sum((r * run).sum()) / global_sum(run.sum()).clamp_min(1.0)
        return (p_mean - rho_g) ** 2, (r_bar - rho_w) ** 2
    l_gate = (p.mean() - rho_g) ** 2
    r_bar = (r * run).sum() / run.sum().clamp_min(1.0)
    return l_gate, (r_bar - rho_w) ** 2


def distill_loss(elastic_pred: Tensor, dense_pred: Tensor) -> Tensor:
    """L_perf without data: the elastic prediction against the same model's dense one."""
    return F.mse_loss(elastic_pred, dense_pred.detach())


def check_resume_layout(path: str, meta: dict, shapes: dict[str, list[int]], routers: RouterSet) -> None:
    """A training state holds routers of the layout this run trains, or a ValueError before any step.
    shapes: the state's router tensors (RouterSet state_dict names) -> shape. Files from before the
    compact layout carry no `router_layout`: their keys tell (released routers have `img_mod`)."""
    saved = meta.get("router_layout") or ("released" if any(".img_mod." in k for k in shapes) else "compact")
    want = routers.config.layout
    if saved != want:
        raise ValueError(f"resume: {path} holds {saved}-layout routers but this run trains {want}-layout ones; "
                         f"resume with the router layout {saved!r}, or train a new file")
    if shapes != {k: list(v.shape) for k, v in routers.state_dict().items()}:
        raise ValueError(f"resume: {path} holds routers of another shape (blocks or modulation rank) than this "
                         "run trains; resume with the settings it was trained with, or train a new file")


def check_resume_state(path: str, routers: RouterSet) -> dict:
    """The training state file `path` can resume `routers` (see check_resume_layout); -> its metadata."""
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        shapes = {k[8:]: list(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith("routers.")}
    check_resume_layout(path, meta, shapes, routers)
    return meta


class RouterTrainer:
    """Adam on the routers (and the backbone when end_to_end); save / resume; progress; cancel."""

    def __init__(self, routers: RouterSet, cfg: TrainConfig, backbone: torch.nn.Module | None = None):
        self.routers, self.cfg, self.step = routers, cfg, 0
        self.trained = [routers, backbone if cfg.end_to_end else None]  # what DDP all-reduces under torchrun
        self._ddp = None
        groups = [{"params": list(routers.parameters())}]
        if cfg.end_to_end and backbone is not None:
            groups.append({"params": [p for p in backbone.parameters() if p.requires_grad],
                           "lr": cfg.lr if cfg.backbone_lr is None else cfg.backbone_lr})
        self.opt = torch.optim.Adam(groups, lr=cfg.lr)
        self.backbone_lr = groups[-1]["lr"] if len(groups) > 1 else None
        self.history: list[dict] = []

    def gate_kw(self) -> dict:
        """The gate estimator's settings at the current step, for the host's `elastic_forward` call."""
        return {"noise": self.cfg.gate_noise, "temperature": self.cfg.temperature(self.step),
                "width": self.cfg.train_width}

    def train_step(self, perf_and_aux: Callable[[], tuple[Tensor, Aux]]) -> dict:
        if self._ddp is None:  # under torchrun: the forward through DDP, so the backward all-reduces
            self._ddp = data_parallel(self.trained, find_unused=not self.cfg.train_width) or False
        perf, aux = self._ddp(perf_and_aux) if self._ddp else perf_and_aux()
        l_gate, l_width = budget_losses(aux, self.cfg.rho_g, self.cfg.rho_w)
        if not self.cfg.train_width:
            l_width = l_width.detach() * 0
        loss = perf + self.cfg.lam * (l_gate + l_width)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.backbone_lr is not None:  # Adam's first steps move every weight by ~lr: ramp the backbone in
            ramp = min(1.0, (self.step + 1) / self.cfg.backbone_warmup) if self.cfg.backbone_warmup else 1.0
            self.opt.param_groups[1]["lr"] = self.backbone_lr * ramp
        self.opt.step()
        self.step += 1
        run = torch.stack(aux.g_hard)
        m = {"step": self.step, "loss": loss.item(), "perf": perf.item(), "gating": l_gate.item(),
             "width": l_width.item(), "mean_gate": torch.stack(aux.p).mean().item(),
             "open": run.mean().item(), "mean_width": ((torch.stack(aux.r) * run).sum() / run.sum().clamp_min(1)).item()}
        self.history.append(m)
        return m

    def fit(self, perf_and_aux, steps: int | None = None, progress: Callable[[dict], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> int:
        """Train up to `steps` more steps; returns how many ran (fewer when should_stop said so)."""
        n = 0
        for _ in range(self.cfg.steps if steps is None else steps):
            if should_stop is not None and should_stop():
                break
            m = self.train_step(perf_and_aux)
            n += 1
            if progress is not None:
                progress(m)
        return n

    # -- save / resume: safetensors only (no pickle) -------------------------------------------------
    def state_tensors(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        sd = self.opt.state_dict()
        tensors = {f"opt.{i}.{k}": v.contiguous() for i, st in sd["state"].items() for k, v in st.items()
                   if isinstance(v, Tensor)}
        tensors.update({f"routers.{k}": v.contiguous() for k, v in self.routers.state_dict().items()})
        meta = {"step": str(self.step), "param_groups": json.dumps(sd["param_groups"]),
                "config": json.dumps(asdict(self.cfg)), "router_layout": self.routers.config.layout}
        return tensors, meta

    def save(self, path: str) -> None:
        tensors, meta = self.state_tensors()
        save_file(tensors, path, metadata=meta)

    def resume(self, path: str) -> None:
        meta = check_resume_state(path, self.routers)
        tensors = load_file(path)
        self.routers.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("routers.")})
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        # Adam's moments and step come back; its settings (learning rates included) are this run's:
        # load_state_dict would put the saved ones over the rates the resuming run asked for
        settings = [{k: v for k, v in g.items() if k != "params"} for g in self.opt.param_groups]
        self.opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        for group, mine in zip(self.opt.param_groups, settings):
            group.update(mine)
        self.step = int(meta["step"])
