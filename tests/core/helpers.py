"""Small builders shared by the core tests."""
import math

import torch

from elastic_core.config import ElasticConfig, RouterConfig
from elastic_core.reference import RefDoubleBlock, double_run_fn, randomize_
from elastic_core.policy import Policy, in_window
from elastic_core.router import Router, RouterSet
from elastic_core.runner import ElasticRun, run_stack

D, HEADS = 32, 2


def make_stack(n=4, seed=0, dim=D):
    g = torch.Generator().manual_seed(seed)
    blocks = [randomize_(RefDoubleBlock(dim, HEADS), std=0.05, generator=g) for _ in range(n)]
    routers = RouterSet(RouterConfig(dim), [f"double_blocks.{i}" for i in range(n)]).init_full_capacity(generator=g)
    return blocks, routers


def inputs(b=1, li=12, lt=5, seed=1, dim=D):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, li, dim, generator=g), torch.randn(b, lt, dim, generator=g),
            torch.randn(b, dim, generator=g))


@torch.no_grad()
def force(router: Router, p=None, width_idx=None):
    """Make a router's output independent of its input: gate probability p, width index."""
    if p is not None:
        router.out[2].weight.zero_()
        router.out[2].bias.fill_(math.log(p / (1 - p)) if 0 < p < 1 else (30.0 if p >= 1 else -30.0))
    if width_idx is not None:
        router.width_head.weight.zero_()
        router.width_head.bias.fill_(-10.0)
        router.width_head.bias[width_idx] = 10.0
    return router


def start(blocks, routers, num_steps=1, **cfg):
    specs = [b.spec(n) for b, n in zip(blocks, routers.block_names)]
    return ElasticRun(routers, specs, Policy(ElasticConfig(**cfg)), num_steps=num_steps)


def begin(run, index, sigma=None):
    """Step `index` of a uniform schedule: its percent of the schedule is index / num_steps."""
    run.begin_step(index, sigma, in_window(run.config, index / run.num_steps))


def step(run, blocks, img, txt, vec, index=0, row_keys=None):
    begin(run, index)
    out = run_stack(run, [double_run_fn(b, vec) for b in blocks], {"img": img, "txt": txt}, vec, row_keys=row_keys)
    return out["img"], out["txt"]
