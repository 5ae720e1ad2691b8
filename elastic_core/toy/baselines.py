"""The baselines of the toy benchmark in their published forms (see docs/benchmarks.md),
as stack policies for `pipeline.sample_with`, each counting the compute it spends.

Rows of a batch are [uncond B; cond B] under guidance (sample r owns rows r and B + r), so a cache
decides per sample from both of its rows together, as FBCache / TeaCache do for a batched CFG call.

  fbcache   First-block cache (WaveSpeed / ParaAttention / cache-dit F1B0): run block 0; when its
            residual is within `threshold` (relative L1) of the residual of the last step that ran in
            full, reuse that step's residual of blocks 1..N-1. The reference is NOT updated on a
            cached step; at most `cap` cached steps in a row; caching only inside [start, end).
  teacache  TeaCache: the relative L1 change of block 0's modulated input between consecutive steps,
            rescaled by a polynomial fitted on calibration runs (input change -> output change),
            accumulates; below `threshold` the last stack residual is reused, above it every block
            runs and the sum resets. The first and last steps always run.
  static    Blocks removed for every sample and step: `greedy_drop` picks them on calibration scenes
            by measured damage (training.train_static then trains the pruned model).
  plans     Random and fixed decision plans with E-DiT's per-(step, block) action rates (controls).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..stats import RUN, RunRecord
from .model import ToyDiT


@dataclass
class Spent:
    """Compute a run spent, in full blocks on one row (router and probe costs as block fractions)."""
    blocks: float = 0.0
    calls: list = field(default_factory=list)  # per step: rows that ran the whole stack (diagnostics)


def block_flops(model: ToyDiT) -> float:
    """FLOPs of one full block on one row (sample)."""
    spec = model.specs()[0]
    tokens = {"img": (model.cfg.image // model.cfg.patch) ** 2, "txt": model.cfg.tokens}
    return spec.attn_flops(tokens) + spec.mlp_flops(tokens, 1.0)


def _sample_of_rows(rows: int, samples: int) -> Tensor:
    return torch.arange(rows) % samples  # [R]: rows [uncond B; cond B] -> sample index


def _per_sample(x: Tensor, of_row: Tensor, samples: int) -> Tensor:
    """Sum a per-row value [R] into its samples [B]."""
    return torch.zeros(samples, dtype=x.dtype).index_add_(0, of_row, x)


def _rel_l1(a: Tensor, ref: Tensor, of_row: Tensor, samples: int) -> Tensor:
    """Relative L1 distance per sample: sum |a - ref| / sum |ref| over the sample's rows. [B]"""
    num = _per_sample((a - ref).abs().flatten(1).sum(1), of_row, samples)
    return num / _per_sample(ref.abs().flatten(1).sum(1), of_row, samples).clamp_min(1e-12)


def _run_rest(model: ToyDiT, img: Tensor, txt: Tensor, vec: Tensor, rows: Tensor, first: int) -> Tensor:
    """Blocks first..N-1 on the given rows. -> img of those rows [r, N, D]"""
    h, c, v = img[rows], txt[rows], vec[rows]
    for b in model.blocks[first:]:
        h, c = b(h, c, v)
    return h


def fbcache_stack(model: ToyDiT, steps: int, samples: int, threshold: float, cap: int | None = None,
                  start: float = 0.0, end: float = 1.0, spent: Spent | None = None):
    """First-block cache as a stack policy (see the module doc). cap None: no cap."""
    n, st = len(model.blocks), {"ref": None, "cache": None, "hits": torch.zeros(samples, dtype=torch.long)}
    spent = spent if spent is not None else Spent()

    def stack(step, img, txt, vec):
        of_row = _sample_of_rows(img.shape[0], samples)
        img1, txt1 = model.blocks[0](img, txt, vec)
        r0 = img1 - img
        spent.blocks += img.shape[0]
        hit = torch.zeros(samples, dtype=torch.bool)
        if st["ref"] is not None and start <= step / steps < end:
            hit = _rel_l1(r0, st["ref"], of_row, samples) < threshold
            if cap is not None:
                hit &= st["hits"] < cap
        st["hits"] = torch.where(hit, st["hits"] + 1, torch.zeros_like(st["hits"]))
        rows_hit = hit[of_row]
        out = img1.clone()
        if st["cache"] is None:
            st["ref"], st["cache"] = torch.zeros_like(r0), torch.zeros_like(img1)
        out[rows_hit] = img1[rows_hit] + st["cache"][rows_hit]
        miss = (~rows_hit).nonzero()[:, 0]
        if len(miss):
            h = _run_rest(model, img1, txt1, vec, miss, 1)
            out[miss] = h
            st["cache"][miss] = h - img1[miss]
            st["ref"][miss] = r0[miss]  # only a step that ran in full becomes the reference
            spent.blocks += len(miss) * (n - 1)
        spent.calls.append(len(miss))
        return out
    return stack, spent


def modulated_input(model: ToyDiT, img: Tensor, vec: Tensor) -> Tensor:
    """Block 0's timestep-modulated image input (what TeaCache watches). [R, N, D]"""
    shift, scale = model.blocks[0].img_mod(F.silu(vec)).chunk(6, dim=-1)[:2]
    return F.layer_norm(img, img.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


def probe_cost(model: ToyDiT) -> float:
    """TeaCache's probe (block 0's modulation linear) as a fraction of a block."""
    d = model.cfg.dim
    return 2.0 * d * 6 * d / block_flops(model)


def teacache_stack(model: ToyDiT, steps: int, samples: int, threshold: float, poly: Sequence[float],
                   spent: Spent | None = None, probe=None, probe_blocks: float | None = None):
    """TeaCache as a stack policy (see the module doc). poly: numpy polyfit coefficients, highest first.
    probe(img, vec) -> what is watched (default: block 0's modulated input), costing probe_blocks."""
    n = len(model.blocks)
    st = {"prev": None, "cache": None, "acc": torch.zeros(samples, dtype=torch.float64)}
    spent = spent if spent is not None else Spent()
    probe = probe or (lambda img, vec: modulated_input(model, img, vec))
    cost = probe_cost(model) if probe_blocks is None else probe_blocks

    def stack(step, img, txt, vec):
        of_row = _sample_of_rows(img.shape[0], samples)
        mod = probe(img, vec)
        spent.blocks += img.shape[0] * cost
        run = torch.ones(samples, dtype=torch.bool)
        if st["prev"] is not None and 0 < step < steps - 1:
            rel = _rel_l1(mod, st["prev"], of_row, samples).double().numpy()
            st["acc"] += torch.from_numpy(np.polyval(poly, rel))
            run = st["acc"] >= threshold
        st["prev"] = mod
        st["acc"][run] = 0.0
        rows_run = run[of_row]
        out = img.clone()
        if st["cache"] is None:
            st["cache"] = torch.zeros_like(img)
        out[~rows_run] = img[~rows_run] + st["cache"][~rows_run]
        idx = rows_run.nonzero()[:, 0]
        if len(idx):
            h = _run_rest(model, img, txt, vec, idx, 0)
            out[idx] = h
            st["cache"][idx] = h - img[idx]
            spent.blocks += len(idx) * n
        spent.calls.append(len(idx))
        return out
    return stack, spent


def teacache_calibration_stack(model: ToyDiT, samples: int, pairs: list):
    """A dense stack that records, per step and sample, (input change, output change) for the fit."""
    st = {"prev_in": None, "prev_out": None}

    def stack(step, img, txt, vec):
        of_row = _sample_of_rows(img.shape[0], samples)
        mod = modulated_input(model, img, vec)
        h = _run_rest(model, img, txt, vec, torch.arange(img.shape[0]), 0)
        out = h - img  # the stack residual, what TeaCache reuses
        if st["prev_in"] is not None:
            x = _rel_l1(mod, st["prev_in"], of_row, samples)
            y = _rel_l1(out, st["prev_out"], of_row, samples)
            pairs.extend(zip(x.tolist(), y.tolist()))
        st["prev_in"], st["prev_out"] = mod, out
        return h
    return stack


def fit_rescale(pairs: list, degree: int = 4) -> list[float]:
    """TeaCache's rescale polynomial: least squares, output change as a function of input change."""
    x, y = np.array(pairs, dtype=np.float64).T
    return [float(c) for c in np.polyfit(x, y, min(degree, max(1, len(x) // 4)))]


def greedy_drop(damage: Callable[[frozenset[int]], float], n_blocks: int, count: int,
                keep: Sequence[int] = ()) -> list[int]:
    """Blocks to remove, in order: each round removes the block whose removal (with those already
    removed) does the least measured damage. damage(drop set) -> a loss (lower is better)."""
    order: list[int] = []
    for _ in range(count):
        cands = [b for b in range(n_blocks) if b not in order and b not in keep]
        scores = {b: damage(frozenset(order + [b])) for b in cands}
        order.append(min(scores, key=scores.get))
    return order


def action_rates(records: Sequence[RunRecord], steps: int, blocks: int, widths: Sequence[float]):
    """Per (step, block): action rates [steps, blocks, 3] (skip, reuse, run) and the width rates of
    the runs [steps, blocks, W], over every row of every record."""
    acts = np.zeros((steps, blocks, 3))
    wid = np.zeros((steps, blocks, len(widths)))
    for r in records:
        ev = r.events
        for s, b, a, w in zip(ev["step"], ev["block"], ev["action"], ev["width"]):
            acts[s, b, a] += 1
            if a == RUN:
                wid[s, b, list(widths).index(w)] += 1
    wid[wid.sum(-1) == 0, -1] = 1  # never ran: full width
    return acts / acts.sum(-1, keepdims=True).clip(1), wid / wid.sum(-1, keepdims=True)


def random_plan(acts: np.ndarray, wid: np.ndarray, widths: Sequence[float], seed: int):
    """plan(step, block): an action drawn with E-DiT's rates there, a width with its run widths."""
    rng = np.random.default_rng(seed)

    def plan(step: int, block: int):
        a = int(rng.choice(3, p=acts[step, block]))
        return a, float(widths[int(rng.choice(len(widths), p=wid[step, block]))])
    return plan


def fixed_plan(acts: np.ndarray, wid: np.ndarray, widths: Sequence[float]):
    """plan(step, block): E-DiT's most common action there, at its most common run width."""
    def plan(step: int, block: int):
        return int(acts[step, block].argmax()), float(widths[int(wid[step, block].argmax())])
    return plan

