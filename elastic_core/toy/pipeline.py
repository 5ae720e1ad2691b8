"""The toy world's files and sampling: load / save the toy DiT and its routers; sample dense, elastic
or with any other stack policy, on the model's shifted schedule with classifier-free guidance.

The shipped files (assets/) are rebuilt by `elastic-dit toy-build`; training lives in training.py.
"""
from __future__ import annotations

import copy
import os
import time
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import RouterMeta, load_routers, save_routers
from ..config import ElasticConfig
from ..reference import double_run_fn
from ..policy import PlanPolicy, Policy, in_window
from ..router import RouterSet
from ..runner import ElasticRun, run_stack
from ..train import TrainConfig
from .model import ToyConfig, ToyDiT, guided, sample
from .training import new_routers  # noqa: F401  (public here as before; training lives in training.py)

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
    types = {k: type(v) for k, v in ToyConfig().to_dict().items()}
    cfg = ToyConfig(**{k: types[k](v) for k, v in meta.items() if k in types})
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


def save_dit(model: ToyDiT, path: str = DIT_FILE, quantize: bool = True) -> None:
    """int8 rows (shipped) or, quantize False, fp32 (a working copy)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = {k: str(v) for k, v in model.cfg.to_dict().items()}
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(_quantize(sd) if quantize else sd, path, metadata=meta)


# Inference defaults written into toy router files (ElasticConfig fields). The trained gates commit
# (p near 0 or 1), so the wide reuse band catches the gates near 1 and the cache window's start sets
# compute (about 56 % here); the width head is off: it cost quality at matched compute (docs/benchmarks.md).
TOY_DEFAULTS = {"tau": 0.5, "delta": 0.5, "max_reuse": 3, "cache_start": 0.2, "cache_end": 1.0, "width": False}


def save_toy_routers(routers: RouterSet, cfg: TrainConfig, path: str = ROUTER_FILE, notes: str = "",
                     objective: str = "distill", defaults: dict | None = None, half: bool = True) -> None:
    trainer = {"distill": "routers only, dense-teacher distillation",
               "anchored": "end to end, distilled from a frozen copy of the original toy DiT",
               "data": "end to end, flow matching on the toy world's images"}[objective]
    meta = RouterMeta.for_routers(routers, FAMILY, defaults=dict(TOY_DEFAULTS if defaults is None else defaults),
                                  rho_g=cfg.rho_g, rho_w=cfg.rho_w,
                                  provenance={"trainer": f"elastic-dit train ({trainer})", "objective": objective,
                                              "steps": str(cfg.steps), "notes": notes})
    out = copy.deepcopy(routers)
    save_routers(path, out.half() if half else out, meta)  # shipped small; load_toy_routers computes in fp32


def load_toy_routers(path: str = ROUTER_FILE):
    _need(path)
    ckpt = load_routers(path)
    ckpt.routers.float()
    return ckpt


# A stack policy: (step, img [R, N, D], txt [R, T, D], vec [R, D]) -> img after the block stack.
StackFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def dense_stack(model: ToyDiT, skip: frozenset[int] = frozenset()) -> StackFn:
    def stack(step, img, txt, vec):
        for i, b in enumerate(model.blocks):
            if i not in skip:
                img, txt = b(img, txt, vec)
        return img
    return stack


def elastic_run(model: ToyDiT, routers: RouterSet, config: ElasticConfig, steps: int, plan=None) -> ElasticRun:
    """The one place a toy run is made; `plan(step, block) -> (action, width) | None` forces decisions."""
    policy = PlanPolicy(config, plan) if plan is not None else Policy(config)
    return ElasticRun(routers, model.specs(), policy, steps)


def begin_step_fn(run: ElasticRun):
    """The host side of the cache window: t runs from 1 (noise) to 0, so a step lies at 1 - t of the
    noise schedule."""
    def begin(step: int, t: float) -> None:
        run.begin_step(step, t, in_window(run.config, 1.0 - t))
    return begin


def elastic_stack(model: ToyDiT, run: ElasticRun, guided_rows: bool) -> StackFn:
    """Algorithm 1 over the toy blocks; rows are [uncond B; cond B] under guidance, else [cond B]."""
    def stack(step, img, txt, vec):
        b = img.shape[0] // 2 if guided_rows else img.shape[0]
        keys = ([("uncond", r) for r in range(b)] if guided_rows else []) + [("cond", r) for r in range(b)]
        out = run_stack(run, [double_run_fn(blk, vec) for blk in model.blocks], {"img": img, "txt": txt}, vec,
                        row_keys=keys, router_tokens=lambda s: [s["txt"], s["img"]])
        return out["img"]
    return stack


def sample_with(model: ToyDiT, tokens: torch.Tensor, noise: torch.Tensor, steps: int, stack: StackFn,
                guidance: float | None = None, begin_step=None) -> torch.Tensor:
    """Euler on the model's shifted schedule, classifier-free guided (uncond and cond rows in one batch)
    unless guidance is 1. tokens [B, T], noise [B, 3, S, S] -> images [B, 3, S, S]."""
    g = model.cfg.guidance if guidance is None else guidance

    def model_fn(x, t, tok, i):
        img, txt, vec = model.embed(x, t, tok)
        return model.head(stack(i, img, txt, vec), vec)

    def velocity(x, t, i):
        if begin_step is not None:
            begin_step(i, float(t[0]))
        if g == 1.0:
            return model_fn(x, t, tokens, i)
        return guided(lambda xx, tt, tok: model_fn(xx, tt, tok, i), x, t, tokens, g)

    with torch.inference_mode():
        return sample(velocity, noise, steps, shift=model.cfg.shift)


def generate(model: ToyDiT, tokens: torch.Tensor, noise: torch.Tensor, steps: int,
             routers: RouterSet | None = None, config: ElasticConfig | None = None, plan=None,
             guidance: float | None = None):
    """Sample dense (routers None) or elastic. -> images [B, 3, S, S], record or None, wall seconds"""
    g = model.cfg.guidance if guidance is None else guidance
    run = elastic_run(model, routers, config or ElasticConfig(), steps, plan) if routers is not None else None
    stack = dense_stack(model) if run is None else elastic_stack(model, run, g != 1.0)
    t0 = time.perf_counter()
    out = sample_with(model, tokens, noise, steps, stack, g, None if run is None else begin_step_fn(run))
    wall = time.perf_counter() - t0
    return out, (run.finish() if run else None), wall
