"""What the toy benchmark trains before it measures, with one budget for all: the routers in each
mode (routers-only distillation, anchored end to end, end to end on data) and the static pruned
models. Results are cached in a folder, keyed by the base model's file and the settings, so a second
run of the benchmark measures at once.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, replace

from ..router import RouterSet
from ..train import TrainConfig
from . import pipeline as P
from .model import ToyDiT
from .training import train_routers, train_static


@dataclass(frozen=True)
class Budget:
    """The training budget every trained method gets (routers, and the backbone when it trains)."""
    steps: int = 600
    batch: int = 16
    lr: float = 3e-3  # routers
    backbone_lr: float = 1e-4
    backbone_warmup: int = 50
    rho_g: float = 0.5
    rho_w: float = 0.6
    gate_noise: float = 1.0
    train_width: bool = True
    bank: int = 64  # > 0: distil on this many captions' teacher trajectories, guided (not the data objective)
    dense_anchor: bool = True  # anchored: the student's dense path is pulled to the original as well
    seed: int = 0

    def train_config(self, end_to_end: bool) -> TrainConfig:
        return TrainConfig(steps=self.steps, lr=self.lr, rho_g=self.rho_g, rho_w=self.rho_w, end_to_end=end_to_end,
                           backbone_lr=self.backbone_lr, backbone_warmup=self.backbone_warmup,
                           gate_noise=self.gate_noise, train_width=self.train_width)

    def key(self) -> str:
        return hashlib.sha1(repr(sorted(asdict(self).items())).encode()).hexdigest()[:8]


@dataclass
class Variant:
    name: str
    model: ToyDiT
    routers: RouterSet | None = None
    drop: frozenset[int] = frozenset()


def _base_key(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()[:8]


class Artifacts:
    """A cache folder of trained variants of one base toy DiT."""

    def __init__(self, folder: str | None, base_path: str, log=print):
        self.folder, self.base_path, self.log = folder, base_path, log
        self.base_key = _base_key(base_path)
        if folder is not None:
            os.makedirs(folder, exist_ok=True)

    def _path(self, name: str) -> str | None:
        return None if self.folder is None else os.path.join(self.folder, f"{self.base_key}-{name}.safetensors")

    def edit(self, objective: str, budget: Budget, layout: str = "released") -> Variant:
        """Routers of `layout` trained with `objective` (and, end to end, the tuned DiT) under `budget`."""
        name = f"edit-{objective}-{budget.key()}" + ("" if layout == "released" else f"-{layout}")
        rpath, dpath = self._path(name), self._path(name + "-dit")
        model = P.load_dit(self.base_path)
        e2e = objective != "distill"
        if rpath and os.path.isfile(rpath) and (not e2e or os.path.isfile(dpath)):
            return Variant(name, P.load_dit(dpath) if e2e else model, P.load_toy_routers(rpath).routers)
        self.log(f"training routers: {objective}, {budget.steps} steps, {layout} layout")
        cfg = budget.train_config(e2e)
        routers, _ = train_routers(model, cfg, seed=budget.seed, objective=objective, batch_size=budget.batch,
                                   bank_size=budget.bank if objective != "data" else 0,
                                   dense_anchor=budget.dense_anchor, layout=layout)
        if rpath:
            P.save_toy_routers(routers, cfg, rpath, objective=objective, half=False)
            if e2e:
                P.save_dit(model, dpath, quantize=False)
        return Variant(name, model.eval(), routers)

    def static(self, drop: frozenset[int], budget: Budget, objective: str) -> Variant:
        """The base model with blocks `drop` removed, trained with `budget` and `objective`."""
        name = f"static-{'-'.join(map(str, sorted(drop)))}-{objective}-{budget.key()}"
        path = self._path(name)
        if path and os.path.isfile(path):
            return Variant(name, P.load_dit(path), None, drop)
        self.log(f"training the static model without blocks {sorted(drop)}: {objective}, {budget.steps} steps")
        model = train_static(P.load_dit(self.base_path), drop, budget.steps, budget.backbone_lr, objective,
                             budget.seed, budget.batch, bank_size=budget.bank if objective != "data" else 0,
                             warmup=budget.backbone_warmup)
        if path:
            P.save_dit(model, path, quantize=False)
        return Variant(name, model, None, drop)


def with_steps(budget: Budget, steps: int) -> Budget:
    return replace(budget, steps=steps)

