"""Training in the toy world: the toy DiT itself, its routers in three modes, and the static pruned
baseline with the same budget.

Router objectives (L_perf; the budget losses come from elastic_core.train):
  distill   routers only: the elastic prediction against the frozen backbone's dense prediction
  anchored  end to end: routers and backbone; the target is a frozen copy of the ORIGINAL backbone,
            so it never moves with the student
  data      end to end, as the paper trains: the flow-matching loss on the toy world's own images
Inputs are the world's images noised at times drawn as sampling visits them (the model's shifted
schedule); the distilling objectives drop half the captions, since guided sampling runs an
unconditional row beside every conditional one.
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch

from ..config import RouterConfig
from ..distributed import share, world
from ..router import RouterSet
from ..train import Aux, RouterTrainer, TrainConfig, distill_loss, elastic_forward
from .model import ToyConfig, ToyDiT, flow_loss, guided, schedule
from .world import WorldSpec, batch

OBJECTIVES = ("distill", "anchored", "data")
DISTILL_DROP = 0.5  # share of empty captions when distilling: guided sampling runs uncond and cond rows
DATA_DROP = 0.1  # the toy DiT's own caption dropout
BANK_STEPS = 20  # trajectory banks follow sampling at the reference step count


def train_dit(steps: int = 2000, batch_size: int = 32, lr: float = 2e-3, seed: int = 0, cfg: ToyConfig = ToyConfig(),
              drop: float = DATA_DROP, ema: float = 0.998, progress: Callable[[int, float], None] | None = None,
              checkpoint: Callable[[int, ToyDiT], None] | None = None, every: int = 250) -> ToyDiT:
    """Rectified flow on the toy world with caption dropout `drop`; returns the EMA of the weights.
    checkpoint(step, ema_model) is called every `every` steps (a long CPU run can be cut short)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ToyDiT(cfg)
    avg = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    for i in range(steps):
        x, tok, _ = batch(batch_size, rng, WorldSpec(size=cfg.image))
        loss = flow_loss(model, torch.from_numpy(x), torch.from_numpy(tok), drop=drop)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(ema, (1 + i) / (10 + i))  # the average warms up with the model
        with torch.no_grad():
            for a, p in zip(avg.parameters(), model.parameters()):
                a.lerp_(p, 1 - decay)
        if progress is not None:
            progress(i + 1, loss.item())
        if checkpoint is not None and (i + 1) % every == 0:
            checkpoint(i + 1, avg.eval())
    return avg.eval()


def new_routers(model: ToyDiT, seed: int = 0, layout: str = "released") -> RouterSet:
    # a small router hidden size: the toy blocks are narrow, and the router must stay cheap beside them
    config = RouterConfig.of_layout(model.cfg.dim, layout, hidden=16)
    return RouterSet(config, [s.name for s in model.specs()]).init_full_capacity(
        generator=torch.Generator().manual_seed(seed))


def noised_batch(model: ToyDiT, rng: np.random.Generator, batch_size: int, drop: float, t_dist: str = "schedule"):
    """World images noised at random times. t_dist "schedule": uniform on the model's shifted sampling
    schedule (where sampling evaluates the model); "logit-normal": the DiT's own training draw.
    -> x_t [B, 3, S, S], t [B], tokens [B, caption] (a share `drop` emptied), target velocity [B, 3, S, S]"""
    x0, tok, _ = (torch.from_numpy(a) for a in batch(batch_size, rng, WorldSpec(size=model.cfg.image)))
    g = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
    u = torch.rand(batch_size, generator=g)
    s = model.cfg.shift
    t = s * u / (1 + (s - 1) * u) if t_dist == "schedule" else torch.sigmoid(torch.randn(batch_size, generator=g))
    eps = torch.randn(x0.shape, generator=g)
    keep = torch.rand(batch_size, generator=g) >= drop
    tok = torch.where(keep[:, None], tok, torch.zeros_like(tok))
    xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps
    return xt, t, tok, eps - x0


def _elastic_pred(model: ToyDiT, routers: RouterSet, xt, t, tok, cfg: TrainConfig, gate_kw: dict):
    img, txt, vec = model.embed(xt, t, tok)
    fns = [lambda s, m, b=b: dict(zip(("img", "txt"), b(s["img"], s["txt"], vec, m))) for b in model.blocks]
    out, aux = elastic_forward(routers, fns, [b.hidden for b in model.blocks], {"img": img, "txt": txt}, vec,
                               cfg.tau, lambda s: [s["txt"], s["img"]], cfg.grad_checkpoint, **gate_kw)
    return model.head(out["img"], vec), aux


def perf_target(objective: str, teacher: ToyDiT | None):
    """What the elastic prediction is pulled toward: target(x_t, t, tokens, v) -> [B, 3, S, S].

    distill / anchored: the frozen teacher's dense prediction (for distill the backbone itself, which
    does not train; for anchored a frozen copy of the original, never the student); data: v = eps - x_0."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "data":
        return lambda xt, t, tok, v: v
    if teacher is None:
        raise ValueError(f"objective {objective!r} needs a frozen teacher")

    @torch.no_grad()
    def target(xt, t, tok, v):
        return teacher(xt, t, tok)
    return target


class TrajectoryBank:
    """States the frozen teacher's own guided sampling visits: n captions x `steps` Euler steps on its
    shifted schedule. Distilling on them trains where sampling will run, not on noised world images."""

    def __init__(self, teacher: ToyDiT, n: int, steps: int, seed: int = 0):
        x0, tok, _ = batch(n, np.random.default_rng(seed + 7), WorldSpec(size=teacher.cfg.image))
        self.tokens = torch.from_numpy(tok)
        x = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 7))
        ts = schedule(steps, teacher.cfg.shift)
        xs = []
        with torch.no_grad():
            for i in range(steps):
                xs.append(x)
                x = x + (ts[i + 1] - ts[i]) * guided(teacher, x, ts[i].expand(n), self.tokens, teacher.cfg.guidance)
        self.x = torch.stack(xs, 1)  # [n, steps, 3, S, S]
        self.t = ts[:-1]  # [steps]

    def draw(self, rng: np.random.Generator, b: int):
        """-> x_t [b, 3, S, S], t [b], tokens [b, caption]"""
        i, j = rng.integers(len(self.tokens), size=b), rng.integers(len(self.t), size=b)
        return self.x[i, j], self.t[j], self.tokens[i]


def perf_loss(predict, model: ToyDiT, objective: str, teacher: ToyDiT | None, rng: np.random.Generator,
              batch_size: int, bank: TrajectoryBank | None = None, dense=None) -> Callable[[], torch.Tensor]:
    """L_perf of predict(x_t, t, tokens) for one step (see `perf_target`); `model` gives the image size,
    schedule shift and guidance scale. With a trajectory `bank` (distill / anchored), the loss is on
    the guided velocity of batch_size / 2 captions (their uncond and cond rows in one call), the
    quantity sampling integrates. dense(x_t, t, tokens): the student's dense prediction, pulled to the
    same target too (anchored: the tuned DiT still works with every block run)."""
    target = perf_target(objective, teacher)
    if bank is not None and objective == "data":
        raise ValueError("the data objective trains on the world's images, not on a trajectory bank")
    drop, t_dist = (DATA_DROP, "logit-normal") if objective == "data" else (DISTILL_DROP, "schedule")
    guidance = model.cfg.guidance

    def loss() -> torch.Tensor:
        # under torchrun every rank draws the same global batch and computes its own share of it
        if bank is not None:
            n = max(1, batch_size // 2)
            xt, t, tok = (a[share(n)] for a in bank.draw(rng, n))
            with torch.no_grad():
                want = guided(teacher, xt, t, tok, guidance)
            fn = (lambda f: guided(f, xt, t, tok, guidance))  # noqa: E731
        else:
            xt, t, tok, v = (a[share(batch_size)] for a in noised_batch(model, rng, batch_size, drop, t_dist))
            want = target(xt, t, tok, v)
            fn = (lambda f: f(xt, t, tok))  # noqa: E731
        out = distill_loss(fn(predict), want)
        return out if dense is None else out + distill_loss(fn(dense), want)
    return loss


def router_perf(model: ToyDiT, routers: RouterSet, rng: np.random.Generator, cfg: TrainConfig,
                gate_kw: Callable[[], dict], objective: str = "distill", teacher: ToyDiT | None = None,
                batch_size: int = 16, bank: TrajectoryBank | None = None,
                dense_anchor: bool = True) -> Callable[[], tuple[torch.Tensor, Aux]]:
    """L_perf and the routers' outputs for one training step; anchored with dense_anchor: plus the
    student's dense prediction against the same frozen target."""
    box: list[Aux] = []

    def predict(x, t, tok):
        pred, aux = _elastic_pred(model, routers, x, t, tok, cfg, gate_kw())
        box.append(aux)
        return pred
    loss = perf_loss(predict, model, objective, teacher, rng, batch_size, bank,
                     dense=model if objective == "anchored" and dense_anchor else None)

    def perf_and_aux() -> tuple[torch.Tensor, Aux]:
        box.clear()
        return loss(), box[0]
    return perf_and_aux


def frozen_copy(model: ToyDiT) -> ToyDiT:
    return copy.deepcopy(model).eval().requires_grad_(False)


def train_routers(model: ToyDiT, cfg: TrainConfig = TrainConfig(), seed: int = 0, routers: RouterSet | None = None,
                  resume: str | None = None, progress=None, should_stop=None, objective: str | None = None,
                  teacher: ToyDiT | None = None, batch_size: int = 16,
                  bank_size: int = 0, dense_anchor: bool = True,
                  layout: str = "released") -> tuple[RouterSet, RouterTrainer]:
    """Train routers (and, end to end, `model` in place). objective: None picks "distill" for routers
    only and "anchored" end to end; `teacher` (anchored) defaults to a frozen copy of `model` as given.
    bank_size > 0 (distill / anchored): distil on that many captions' teacher trajectories, guided.
    dense_anchor (anchored): pull the student's dense prediction to the frozen original as well.
    layout: of new routers, "released" (the shipped toy routers' layout) or "compact"."""
    objective = objective or ("anchored" if cfg.end_to_end else "distill")
    if (objective == "distill") == cfg.end_to_end:
        raise ValueError(f"objective {objective!r} does not match end_to_end={cfg.end_to_end}")
    torch.manual_seed(seed + 1000 * world()[0])  # the gate noise: each rank its own
    if objective == "distill":
        teacher = model
    elif objective == "anchored" and teacher is None:
        teacher = frozen_copy(model)
    model.requires_grad_(cfg.end_to_end)
    routers = routers or new_routers(model, seed, layout)
    trainer = RouterTrainer(routers, cfg, backbone=model)
    if resume:
        trainer.resume(resume)
    bank = TrajectoryBank(teacher, bank_size, BANK_STEPS, seed) if bank_size else None
    perf = router_perf(model, routers, np.random.default_rng(seed + trainer.step), cfg, trainer.gate_kw, objective,
                       teacher, batch_size, bank, dense_anchor)
    trainer.fit(perf, steps=cfg.steps - trainer.step, progress=progress, should_stop=should_stop)
    model.requires_grad_(False)
    return routers, trainer


def train_static(model: ToyDiT, drop: frozenset[int], steps: int, lr: float, objective: str = "anchored",
                 seed: int = 0, batch_size: int = 16, progress=None, bank_size: int = 0, warmup: int = 0) -> ToyDiT:
    """The static baseline: a copy of `model` with blocks `drop` removed, trained with the budget the
    routers get (same objective, inputs, steps, batch, backbone learning rate and its warmup)."""
    if objective not in ("anchored", "data"):
        raise ValueError(f"a static model trains with 'anchored' or 'data', got {objective!r}")
    teacher = frozen_copy(model)
    student = copy.deepcopy(model).train().requires_grad_(True)

    def predict(x, t, tok):
        return student(x, t, tok, skip=drop)
    bank = TrajectoryBank(teacher, bank_size, BANK_STEPS, seed) if bank_size else None
    loss_fn = perf_loss(predict, student, objective, teacher if objective == "anchored" else None,
                        np.random.default_rng(seed), batch_size, bank)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    for i in range(steps):
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.param_groups[0]["lr"] = lr * (min(1.0, (i + 1) / warmup) if warmup else 1.0)  # as the routers' backbone
        opt.step()
        if progress is not None:
            progress(i + 1, loss.item())
    return student.eval().requires_grad_(False)
