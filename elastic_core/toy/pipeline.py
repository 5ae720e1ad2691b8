"""The toy world end to end: train the toy DiT, train its routers, sample dense or elastic.

The shipped files (assets/) are rebuilt by `elastic-dit toy-build`; `elastic-dit train` retrains the
routers alone.
"""
from __future__ import annotations

import copy
import os
import time
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import RouterMeta, load_routers, save_routers
from ..config import ElasticConfig, RouterConfig
from ..reference import double_run_fn
from ..policy import PlanPolicy, Policy, in_window
from ..router import RouterSet
from ..runner import ElasticRun, run_stack
from ..train import Aux, RouterTrainer, TrainConfig, distill_loss, elastic_forward
from .model import ToyConfig, ToyDiT, flow_loss, sample
from .world import WorldSpec, batch

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DIT_FILE = os.path.join(ASSETS, "toy_dit.safetensors")
ROUTER_FILE = os.path.join(ASSETS, "toy_routers.safetensors")
FAMILY = "toy_dit"


def _need(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the toy model files are not built yet; run `elastic-dit toy-build`")


def load_dit(path: str = DIT_FILE) -> ToyDiT:
    from safetensors import safe_open
    _need(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    cfg = ToyConfig(**{k: int(v) for k, v in meta.items() if k in ToyConfig.__dataclass_fields__})
    model = ToyDiT(cfg)
    model.load_state_dict(_dequantize(load_file(path)))
    return model.eval()


_SCALE = ".row_scale"  # int8 weights are stored with one fp16 scale per output row


def _quantize(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Matrices as int8 with a per-row scale (half the size of fp16), everything else fp16."""
    out = {}
    for k, v in sd.items():
        v = v.detach().float()
        if v.dim() == 2 and v.numel() >= 4096:
            scale = v.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # [rows]
            out[k] = torch.round(v / scale[:, None]).to(torch.int8).contiguous()
            out[k + _SCALE] = scale.half().contiguous()
        else:
            out[k] = v.half().contiguous()
    return out


def _dequantize(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.float() * sd[k + _SCALE].float()[:, None] if k + _SCALE in sd else v.float())
            for k, v in sd.items() if not k.endswith(_SCALE)}


def train_dit(steps: int = 2000, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, cfg: ToyConfig = ToyConfig(),
              progress: Callable[[int, float], None] | None = None) -> ToyDiT:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ToyDiT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    for i in range(steps):
        x, tok, _ = batch(batch_size, rng, WorldSpec(size=cfg.image))
        loss = flow_loss(model, torch.from_numpy(x), torch.from_numpy(tok))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if progress is not None:
            progress(i + 1, loss.item())
    return model.eval()


def save_dit(model: ToyDiT, path: str = DIT_FILE) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    meta = {k: str(v) for k, v in model.cfg.to_dict().items()}
    save_file(_quantize(model.state_dict()), path, metadata=meta)


def new_routers(model: ToyDiT) -> RouterSet:
    # a small router hidden size: the toy blocks are narrow (D = 64), and the router must stay cheap beside them
    return RouterSet(RouterConfig(model.cfg.dim, hidden=16), [s.name for s in model.specs()]).init_full_capacity()


def router_perf(model: ToyDiT, routers: RouterSet, rng: np.random.Generator, batch_size: int = 16):
    """Dense-teacher distillation on toy conditionings, random noise and random timesteps."""
    def perf_and_aux() -> tuple[torch.Tensor, Aux]:
        x0, tok, _ = (torch.from_numpy(a) for a in batch(batch_size, rng, WorldSpec(size=model.cfg.image)))
        t = torch.rand(batch_size)
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * torch.randn_like(x0)
        img, txt, vec = model.embed(xt, t, tok)
        fns = [lambda s, m, b=b: dict(zip(("img", "txt"), b(s["img"], s["txt"], vec, m))) for b in model.blocks]
        out, aux = elastic_forward(routers, fns, [b.hidden for b in model.blocks], {"img": img, "txt": txt}, vec,
                                   0.5, lambda s: [s["txt"], s["img"]])
        with torch.no_grad():
            dense = model(xt, t, tok)
        return distill_loss(model.head(out["img"], vec), dense), aux
    return perf_and_aux


def train_routers(model: ToyDiT, cfg: TrainConfig = TrainConfig(), seed: int = 0, routers: RouterSet | None = None,
                  resume: str | None = None, progress=None, should_stop=None) -> tuple[RouterSet, RouterTrainer]:
    torch.manual_seed(seed)
    model.requires_grad_(cfg.end_to_end)
    routers = routers or new_routers(model)
    trainer = RouterTrainer(routers, cfg, backbone=model)
    if resume:
        trainer.resume(resume)
    trainer.fit(router_perf(model, routers, np.random.default_rng(seed + trainer.step)),
                steps=cfg.steps - trainer.step, progress=progress, should_stop=should_stop)
    return routers, trainer


def save_toy_routers(routers: RouterSet, cfg: TrainConfig, path: str = ROUTER_FILE, notes: str = "") -> None:
    meta = RouterMeta.for_routers(routers, FAMILY, defaults={"tau": 0.5, "delta": 0.05, "max_reuse": 3,
                                                             "cache_start": 0.3, "cache_end": 1.0},
                                  rho_g=cfg.rho_g, rho_w=cfg.rho_w,
                                  provenance={"trainer": "elastic-dit train (dense-teacher distillation)",
                                              "steps": str(cfg.steps), "notes": notes})
    save_routers(path, copy.deepcopy(routers).half(), meta)  # shipped small; load_toy_routers computes in fp32


def load_toy_routers(path: str = ROUTER_FILE):
    _need(path)
    ckpt = load_routers(path)
    ckpt.routers.float()
    return ckpt


def generate(model: ToyDiT, tokens: torch.Tensor, noise: torch.Tensor, steps: int,
             routers: RouterSet | None = None, config: ElasticConfig | None = None, plan=None):
    """Sample dense (routers None) or elastic. -> images [B, 3, S, S], record or None, wall seconds"""
    config = config or ElasticConfig()
    policy = PlanPolicy(config, plan) if plan is not None else Policy(config)
    run = ElasticRun(routers, model.specs(), policy, steps) if routers else None

    def velocity(x, t, i):
        img, txt, vec = model.embed(x, t, tokens)
        if run is None:
            for b in model.blocks:
                img, txt = b(img, txt, vec)
        else:
            run.begin_step(i, float(t[0]), in_window(config, 1.0 - float(t[0])))  # t runs from 1 (noise) to 0
            out = run_stack(run, [double_run_fn(b, vec) for b in model.blocks], {"img": img, "txt": txt}, vec,
                            row_keys=[("cond", r) for r in range(x.shape[0])],
                            router_tokens=lambda s: [s["txt"], s["img"]])
            img = out["img"]
        return model.head(img, vec)

    t0 = time.perf_counter()
    with torch.inference_mode():
        out = sample(velocity, noise, steps)
    wall = time.perf_counter() - t0
    return out, (run.finish() if run else None), wall
