"""ComfyUI glue: node classes, family adapters, the model patch. The only place that imports ComfyUI."""
from .apply_node import ElasticDiTApply
from .files import register_folder
from .loader_node import ElasticDiTRouterLoader
from .routes import register_routes
from .stats_node import ElasticDiTStats
from .train_node import ElasticDiTTrainRouter

register_folder()
register_routes()

NODE_CLASS_MAPPINGS = {
    "ElasticDiTRouterLoader": ElasticDiTRouterLoader,
    "ElasticDiTApply": ElasticDiTApply,
    "ElasticDiTStats": ElasticDiTStats,
    "ElasticDiTTrainRouter": ElasticDiTTrainRouter,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ElasticDiTRouterLoader": "Load Elastic Router",
    "ElasticDiTApply": "Apply Elastic DiT",
    "ElasticDiTStats": "Elastic DiT Stats",
    "ElasticDiTTrainRouter": "Train Elastic Router",
}
