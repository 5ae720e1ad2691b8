"""LoRA: low-rank adapters on a DiT's linear weights, trained with the routers, saved as a file that
ComfyUI's own LoRA loader reads.

    W' = W + (alpha / r) up @ down        up [out, r] (starts at zero: a new LoRA changes nothing),
                                          down [r, in]

`LoRA` is a function of the weight, W -> W', so it serves as a torch parametrization (the toy model,
plain torch layers) and as a weight wrapper of a host that hands weights through a cast path: the
adapted weight is what the layer, and any width slicing after it, sees.

File layout, the generic one ComfyUI maps for every model family (Flux, Chroma, Qwen-Image, ...):

    diffusion_model.<module path>.lora_up.weight    [out, r]
    diffusion_model.<module path>.lora_down.weight  [r, in]
    diffusion_model.<module path>.alpha             [] (float)

with metadata `format = elastic-dit-lora`, `format_version`, `rank`, `family`, `router_file` (the
router file it was trained with) and `provenance`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .checkpoint import CheckpointError, read_header
from .train import RouterTrainer, TrainConfig

FORMAT = "elastic-dit-lora"
FORMAT_VERSION = "1"
PREFIX = "diffusion_model."
UP, DOWN, ALPHA = ".lora_up.weight", ".lora_down.weight", ".alpha"


@dataclass(frozen=True)
class LoraTarget:
    path: str  # module path under the diffusion model, e.g. "double_blocks.0.img_attn.qkv"
    out_features: int
    in_features: int


def adapted(name: str) -> bool:
    """Attention and MLP linears are adapted; modulation layers (adaLN: `img_mod`, `modulation`, `mod`,
    Z-Image's `adaLN_modulation`) are not."""
    return not any(p in ("mod", "modulation") or p.endswith("_mod") or p.startswith("adaLN")
                   for p in name.split("."))


def find_targets(blocks: Iterable[tuple[str, nn.Module]]) -> list[LoraTarget]:
    """Every adapted nn.Linear inside the given (path, block module) pairs, in module order."""
    out = []
    for path, block in blocks:
        for name, m in block.named_modules():
            if name and isinstance(m, nn.Linear) and adapted(name):
                out.append(LoraTarget(f"{path}.{name}", m.out_features, m.in_features))
    return out


def check_rank(targets: Sequence[LoraTarget], rank: int) -> None:
    """A rank every target can hold, or a ValueError naming the layer that cannot."""
    if rank < 1:
        raise ValueError(f"lora rank {rank}: expected at least 1")
    if not targets:
        raise ValueError("no linear layers to adapt: expected attention and MLP linears in the blocks")
    small = min(targets, key=lambda t: min(t.out_features, t.in_features))
    limit = min(small.out_features, small.in_features)
    if rank > limit:
        raise ValueError(f"lora rank {rank} is larger than layer {small.path} ({small.out_features} x "
                         f"{small.in_features}) can hold; expected a rank of at most {limit}")


class LoRA(nn.Module):
    """W -> W + (alpha / r) up @ down, in W's dtype and on W's device."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.rank, self.alpha = rank, float(rank if alpha is None else alpha)
        self.down = nn.Parameter(torch.randn(rank, in_features, generator=generator) / in_features ** 0.5)
        self.up = nn.Parameter(torch.zeros(out_features, rank))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self) -> Tensor:
        return (self.up @ self.down) * self.scale  # [out, in]

    def forward(self, weight: Tensor) -> Tensor:
        up, down = self.up.to(weight.device), self.down.to(weight.device)
        return weight + ((up @ down) * self.scale).to(weight.dtype)


class LoraSet(nn.Module):
    """One LoRA per target layer, all of one rank."""

    def __init__(self, targets: Sequence[LoraTarget], rank: int, seed: int = 0):
        super().__init__()
        check_rank(targets, rank)
        self.targets, self.rank = tuple(targets), rank
        g = torch.Generator().manual_seed(seed)
        self.loras = nn.ModuleList(LoRA(t.out_features, t.in_features, rank, generator=g) for t in targets)

    def items(self) -> list[tuple[str, LoRA]]:
        return [(t.path, m) for t, m in zip(self.targets, self.loras)]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def comfy_state(self, prefix: str = PREFIX) -> dict[str, Tensor]:
        """The tensors of a ComfyUI LoRA file, on the CPU."""
        out = {}
        for path, m in self.items():
            out[prefix + path + UP] = m.up.detach().float().cpu().contiguous()
            out[prefix + path + DOWN] = m.down.detach().float().cpu().contiguous()
            out[prefix + path + ALPHA] = torch.tensor(m.alpha)
        return out

    def load_comfy_state(self, tensors: dict[str, Tensor], source: str, prefix: str = PREFIX) -> None:
        check_layout(source, layout_of(tensors, prefix), self.targets, self.rank)
        with torch.no_grad():
            for path, m in self.items():
                m.up.copy_(tensors[prefix + path + UP])
                m.down.copy_(tensors[prefix + path + DOWN])

    def delta_state(self) -> dict[str, Tensor]:
        """{module path: dW [out, in]}: what the LoRA adds to each weight."""
        with torch.no_grad():
            return {path: m.delta().float() for path, m in self.items()}


# -- the file ------------------------------------------------------------------------------------

def layout_of(shapes: dict, prefix: str = PREFIX) -> dict[str, tuple[int, int, int]]:
    """{module path: (out, in, rank)} from a LoRA file's key -> tensor (or header entry) mapping."""
    def shape(v):
        return tuple(v["shape"]) if isinstance(v, dict) else tuple(v.shape)
    out = {}
    for k, v in shapes.items():
        if k.startswith(prefix) and k.endswith(UP):
            path = k[len(prefix):-len(UP)]
            down = shapes.get(prefix + path + DOWN)
            if down is not None and len(shape(v)) == 2 and len(shape(down)) == 2:
                out[path] = (shape(v)[0], shape(down)[1], shape(v)[1])
    return out


def check_layout(source: str, found: dict[str, tuple[int, int, int]], targets: Sequence[LoraTarget],
                 rank: int) -> None:
    """The LoRA in `source` has exactly these targets at this rank, or a CheckpointError saying what differs."""
    want = {t.path: (t.out_features, t.in_features, rank) for t in targets}
    missing, extra = sorted(set(want) - set(found)), sorted(set(found) - set(want))
    if missing or extra:
        what = f"lacks {missing[:3]}" if missing else f"has layers this model does not: {extra[:3]}"
        raise CheckpointError(f"{source}: a LoRA for another model: it {what}"
                              f"{' ...' if len(missing or extra) > 3 else ''}; expected the {len(want)} adapted "
                              "layers of this model")
    for path, w in want.items():
        if found[path] != w:
            raise CheckpointError(f"{source}: LoRA layer {path} is out x in x rank {found[path]}, this model and "
                                  f"rank need {w}; a LoRA for another model or another rank")


def save_lora(path: str, lora: LoraSet, family: str, router_file: str, provenance: dict) -> None:
    """Write `lora` in ComfyUI's format; written to a side file first so a crash never leaves half a file."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "family": family, "rank": str(lora.rank),
            "router_file": router_file, "targets": str(len(lora.targets)), "provenance": json.dumps(provenance)}
    tmp = path + ".partial"
    try:
        save_file(lora.comfy_state(), tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_lora_layout(path: str) -> tuple[dict[str, tuple[int, int, int]], dict]:
    """(layout, metadata) of a LoRA file, from its header only."""
    h = read_header(path)
    return layout_of(h.tensors), h.metadata


# -- plain torch modules (the toy model): the LoRA as a parametrization of each weight ------------

def attach(root: nn.Module, lora: LoraSet) -> None:
    """Every target's `weight` becomes W + LoRA(W) (torch.nn.utils.parametrize); `root` is changed."""
    for path, m in lora.items():
        parametrize.register_parametrization(root.get_submodule(path), "weight", m)


def merge(root: nn.Module, lora: LoraSet) -> None:
    """Bake the LoRA into the weights and drop the parametrizations."""
    for path, _ in lora.items():
        parametrize.remove_parametrizations(root.get_submodule(path), "weight", leave_parametrized=True)


# -- training: routers and an adapter (a LoraSet, or a whole backbone) under one Adam ---------------

class JointTrainer(RouterTrainer):
    """RouterTrainer with a second parameter group: `adapter` at `adapter_lr`. Its tensors ride in the
    state file under `adapter.`, so a resume restores routers, adapter and both optimizer groups."""

    def __init__(self, routers, cfg: TrainConfig, adapter: nn.Module, adapter_lr: float):
        super().__init__(routers, cfg)
        self.adapter = adapter
        self.trained = [routers, adapter]
        params = [p for p in adapter.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam([{"params": list(routers.parameters())},
                                     {"params": params, "lr": adapter_lr}], lr=cfg.lr)

    def state_tensors(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        tensors, meta = super().state_tensors()
        tensors.update({f"adapter.{k}": v.detach().cpu().contiguous() for k, v in self.adapter.state_dict().items()})
        if isinstance(self.adapter, LoraSet):
            meta["lora_rank"] = str(self.adapter.rank)
            meta["lora_targets"] = json.dumps([[t.path, t.out_features, t.in_features] for t in self.adapter.targets])
        return tensors, meta

    def resume(self, path: str) -> None:
        from safetensors.torch import load_file
        super().resume(path)
        state = {k[8:]: v for k, v in load_file(path).items() if k.startswith("adapter.")}
        self.adapter.load_state_dict(state)


def state_lora(meta: dict) -> tuple[int, list[LoraTarget]] | None:
    """(rank, targets) of the LoRA a training state file carries, or None (routers only)."""
    if "lora_rank" not in meta:
        return None
    targets = [LoraTarget(p, int(o), int(i)) for p, o, i in json.loads(meta.get("lora_targets", "[]"))]
    return int(meta["lora_rank"]), targets
