"""The supported DiT families. Adding one: a FamilyAdapter subclass in its own file, listed here."""
from __future__ import annotations

from torch import nn

from .base import BlockRef, FamilyAdapter
from .chroma import ChromaAdapter
from .flux import FluxAdapter
from .hunyuan3d import Hunyuan3D2Adapter
from .hunyuan3d_2_1 import Hunyuan3D21Adapter
from .qwen_image import QwenImageAdapter

ADAPTERS: tuple[FamilyAdapter, ...] = (QwenImageAdapter(), FluxAdapter(), ChromaAdapter(), Hunyuan3D2Adapter(),
                                       Hunyuan3D21Adapter())


class UnsupportedFamily(ValueError):
    pass


def supported_families() -> list[str]:
    return [a.family for a in ADAPTERS]


def adapter_for(dm: nn.Module) -> FamilyAdapter:
    for a in ADAPTERS:
        if a.matches(dm):
            return a
    raise UnsupportedFamily(
        f"Elastic DiT does not support this model ({type(dm).__module__}.{type(dm).__name__}); "
        f"supported families: {', '.join(supported_families())}")


def adapter_by_family(family: str) -> FamilyAdapter:
    for a in ADAPTERS:
        if a.family == family:
            return a
    raise UnsupportedFamily(f"unknown model family {family!r}; supported: {', '.join(supported_families())}")


__all__ = ["ADAPTERS", "BlockRef", "FamilyAdapter", "UnsupportedFamily", "adapter_for", "adapter_by_family",
           "supported_families"]
