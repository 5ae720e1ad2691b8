"""The supported DiT families. Adding one: a FamilyAdapter subclass in its own file, listed here."""
from __future__ import annotations

from torch import nn

from .base import BlockRef, FamilyAdapter
from .chroma import ChromaAdapter
from .flux import FluxAdapter
from .flux2 import Flux2Adapter
from .hunyuan3d import Hunyuan3D2Adapter
from .hunyuan3d_2_1 import Hunyuan3D21Adapter
from .qwen_image import QwenImageAdapter
from .wan import WanAdapter
from .z_image import ZImageAdapter

ADAPTERS: tuple[FamilyAdapter, ...] = (QwenImageAdapter(), FluxAdapter(), ChromaAdapter(), Hunyuan3D2Adapter(),
                                       Hunyuan3D21Adapter(), Flux2Adapter(), ZImageAdapter(),
                                       WanAdapter())


class UnsupportedFamily(ValueError):
    pass


def supported_families() -> list[str]:
    return [a.family for a in ADAPTERS]


def adapter_for(dm: nn.Module) -> FamilyAdapter:
    name = f"{type(dm).__module__}.{type(dm).__name__}"
    for a in ADAPTERS:
        if a.matches(dm):
            why = a.refusal(dm)
            if why is None:
                return a
            name = f"{name}: {why}"
            break
    raise UnsupportedFamily(f"Elastic DiT does not support this model ({name}); "
                            f"supported families: {', '.join(supported_families())}")


__all__ = ["ADAPTERS", "BlockRef", "FamilyAdapter", "UnsupportedFamily", "adapter_for",
           "supported_families"]
