"""Load Elastic Router: a router file, or the routers inside the authors' released checkpoint."""
from __future__ import annotations

from ..elastic_core.checkpoint import RouterCheckpoint, load_routers
from .files import router_names, resolve

ROUTER_TYPE = "ELASTIC_ROUTER"


class ElasticDiTRouterLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"router_name": (router_names(), {
            "tooltip": "A router file from models/elastic_routers, or an E-DiT checkpoint from models/"
                       "diffusion_models (only its router tensors are read)."})}}

    RETURN_TYPES = (ROUTER_TYPE,)
    RETURN_NAMES = ("router",)
    OUTPUT_TOOLTIPS = ("Per-block routers with their family, block list and default settings.",)
    FUNCTION = "load"
    CATEGORY = "Elastic DiT"
    DESCRIPTION = "Loads E-DiT routers. Bad files are refused with a message naming the file and the fault."

    def load(self, router_name: str) -> tuple[RouterCheckpoint]:
        return (load_routers(resolve(router_name)),)
