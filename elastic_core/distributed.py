"""Data-parallel router training with PyTorch's own tools: `torchrun` starts one process per device,
`torch.distributed` connects them, `DistributedDataParallel` all-reduces (averages) the gradients of
the routers and of whatever trains with them (a LoRA, the backbone). No process management here.

Each rank computes its own share of the global batch; the budget losses, which are means over the
whole batch, see the global means (`global_mean`), so N processes with a batch of b each train
exactly as one process with a batch of N b would (up to float rounding). Outside torchrun (no
WORLD_SIZE, or 1) everything here is the identity.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not in a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> tuple[int, int]:
    """Join the process group torchrun describes (its env: WORLD_SIZE, RANK, MASTER_ADDR, ...), once.
    Backend: nccl on CUDA machines, gloo otherwise (or ELASTIC_DIT_DIST_BACKEND). -> (rank, world size)"""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = os.environ.get("ELASTIC_DIT_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":  # one device per process: torchrun's LOCAL_RANK
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return world()


def share(n: int) -> slice:
    """This rank's rows of a global batch of n rows (n must split evenly over the ranks)."""
    rank, size = world()
    if n % size:
        raise ValueError(f"a global batch of {n} does not split over {size} processes; use a multiple of {size}")
    k = n // size
    return slice(rank * k, (rank + 1) * k)


def global_sum(x: Tensor) -> Tensor:
    """The sum of x over ranks, with the gradient of this rank's x scaled by the world size.

    Forward: sum_k x_k (every rank gets the same value). Backward: d/dx_local = world size, so that
    after DDP averages the gradients over ranks, each rank's part has gradient 1, as in one process."""
    rank, size = world()
    if size == 1:
        return x
    total = x.detach().clone()
    dist.all_reduce(total)
    return size * x + (total - size * x).detach()


class _Trained(nn.Module):
    """The modules that train, as one module for DDP; forward(fn) runs the host's training forward."""

    def __init__(self, modules):
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, fn):
        return fn()


def data_parallel(modules, find_unused: bool = False):
    """A DistributedDataParallel over `modules` (its forward(fn) runs fn(), a training forward that uses
    them), or None outside a process group. Rank 0's weights are broadcast to all ranks here."""
    if world()[1] == 1:
        return None
    return nn.parallel.DistributedDataParallel(_Trained([m for m in modules if m is not None]),
                                               find_unused_parameters=find_unused)


def from_rank0(obj):
    """Rank 0's value of a small picklable `obj` on every rank (e.g. the file name rank 0 chose)."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (e.g. for rank 0's file before the others read it)."""
    if world()[1] > 1:
        dist.barrier()
