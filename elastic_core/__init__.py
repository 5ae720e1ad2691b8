"""Elastic DiT engine in pure PyTorch: routers, elastic MLP widths, residual cache, Algorithm 1.

Never imports ComfyUI; the node glue lives in `nodes/`.
"""
from .blocks import BlockSpec
from .config import ElasticConfig, RouterConfig
from .elastic_mlp import MLPLayout, elastic_mlp, masked_mlp
from .router import Router, RouterOutput, RouterSet
from .runner import ElasticRun, run_stack
from .stats import RunRecord

__all__ = ["BlockSpec", "ElasticConfig", "RouterConfig", "MLPLayout", "elastic_mlp", "masked_mlp",
           "Router", "RouterOutput", "RouterSet", "ElasticRun", "run_stack", "RunRecord"]
