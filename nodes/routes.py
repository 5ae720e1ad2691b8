"""The pack's one server route: GET /elastic_dit/presets, what each preset of Apply Elastic DiT sets,
so that the widget marks (and, for fixed presets, fills in) the sliders a preset overrides. Registered
only when ComfyUI runs its server; headless runs have none."""
from __future__ import annotations

from .apply_node import preset_table
from .live import server_instance

ROUTE = "/elastic_dit/presets"


def register_routes() -> bool:
    srv = server_instance()
    if srv is None:
        return False
    from aiohttp import web

    async def presets(request):
        return web.json_response(preset_table())
    srv.routes.get(ROUTE)(presets)
    return True
