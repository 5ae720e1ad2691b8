"""Every method of the toy benchmark as one call: sample a scene set, return the images and the
compute spent as a fraction of the dense model at the reference step count (same rows: under
guidance both the uncond and the cond row of every sample count).

Compute is counted in FLOPs of the blocks (BlockSpec), routers and probes included; the patch
embedding and the output head, the same for every method at a given step count, are left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import ElasticConfig
from ..router import RouterSet
from ..stats import RunRecord
from . import baselines as B
from .model import ToyDiT
from .pipeline import dense_stack, generate, sample_with
from .world import WorldSpec, batch


@dataclass(frozen=True)
class SceneSet:
    """Test or calibration scenes: captions [n, caption], one fixed noise each [n, 3, S, S]."""
    name: str
    tokens: torch.Tensor
    noise: torch.Tensor
    complexity: np.ndarray

    @staticmethod
    def make(name: str, n: int, seed: int, size: int = 32) -> "SceneSet":
        cs = np.linspace(0.0, 1.0, n)
        _, toks, _ = batch(n, np.random.default_rng(seed), WorldSpec(size=size), complexity=cs)
        noise = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(10_000 + seed))
        return SceneSet(name, torch.from_numpy(toks), noise, cs)

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class Output:
    images: torch.Tensor  # [n, 3, S, S]
    compute: float  # fraction of dense at the reference step count
    record: RunRecord | None = None  # E-DiT runs


def _rows(scenes: SceneSet, guidance: float) -> int:
    return len(scenes) * (1 if guidance == 1.0 else 2)


def dense(model: ToyDiT, scenes: SceneSet, steps: int, ref_steps: int, guidance: float | None = None) -> Output:
    imgs = sample_with(model, scenes.tokens, scenes.noise, steps, dense_stack(model), guidance)
    return Output(imgs, steps / ref_steps)


def static(model: ToyDiT, drop: frozenset[int], scenes: SceneSet, steps: int, ref_steps: int,
           guidance: float | None = None) -> Output:
    """A pruned model (`model` is its trained weights; blocks `drop` removed)."""
    imgs = sample_with(model, scenes.tokens, scenes.noise, steps, dense_stack(model, drop), guidance)
    return Output(imgs, (len(model.blocks) - len(drop)) / len(model.blocks) * steps / ref_steps)


def elastic(model: ToyDiT, routers: RouterSet, config: ElasticConfig, scenes: SceneSet, steps: int,
            ref_steps: int, plan=None, guidance: float | None = None) -> Output:
    """E-DiT (or a forced plan): the record's executed fraction counts the routers."""
    imgs, rec, _ = generate(model, scenes.tokens, scenes.noise, steps, routers, config, plan, guidance)
    return Output(imgs, rec.executed_fraction() * steps / ref_steps, rec)


def fbcache(model: ToyDiT, scenes: SceneSet, steps: int, ref_steps: int, threshold: float, cap: int | None,
            start: float = 0.0, end: float = 1.0, guidance: float | None = None) -> Output:
    stack, spent = B.fbcache_stack(model, steps, len(scenes), threshold, cap, start, end)
    imgs = sample_with(model, scenes.tokens, scenes.noise, steps, stack, guidance)
    return Output(imgs, spent.blocks / (_rows(scenes, _g(model, guidance)) * len(model.blocks) * ref_steps))


def teacache(model: ToyDiT, scenes: SceneSet, steps: int, ref_steps: int, threshold: float, poly,
             guidance: float | None = None) -> Output:
    stack, spent = B.teacache_stack(model, steps, len(scenes), threshold, poly)
    imgs = sample_with(model, scenes.tokens, scenes.noise, steps, stack, guidance)
    return Output(imgs, spent.blocks / (_rows(scenes, _g(model, guidance)) * len(model.blocks) * ref_steps))


def teacache_fit(model: ToyDiT, scenes: SceneSet, steps: int, guidance: float | None = None) -> list[float]:
    """The rescale polynomial from dense runs of calibration scenes."""
    pairs: list = []
    sample_with(model, scenes.tokens, scenes.noise, steps, B.teacache_calibration_stack(model, len(scenes), pairs),
                guidance)
    return B.fit_rescale(pairs)


def _g(model: ToyDiT, guidance: float | None) -> float:
    return model.cfg.guidance if guidance is None else guidance
