"""Effective weights of a ComfyUI layer, got the way the layer itself would get them.

Under lowvram the weight lives elsewhere and LoRA is applied per call inside the cast; fp8 and
quantized storage need casting; old scaled-fp8 layers multiply by `scale_weight` in their own
forward; GGUF layers cast in their own `cast_bias_weight` method. So `layer.weight[:k]` is wrong:
cast first, then slice (elastic_core slices views of what this returns).
"""
from __future__ import annotations

from torch import Tensor, nn

import comfy.ops

try:  # v0.8+: quantized storage
    from comfy.quant_ops import QuantizedTensor
except ImportError:  # v0.3.x
    QuantizedTensor = ()


def effective_weights(layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(weight, bias) as `layer` would use them on input x, on x's device and dtype."""
    if hasattr(layer, "cast_bias_weight"):  # GGUF-style layers: dequantize + LoRA in their own method
        w, b = layer.cast_bias_weight(x)
    elif hasattr(layer, "weight_function"):  # comfy.ops layers
        w, b = comfy.ops.cast_bias_weight(layer, x)
    else:  # a plain torch layer
        w, b = layer.weight.to(x), None if layer.bias is None else layer.bias.to(x)
    if QuantizedTensor and isinstance(w, QuantizedTensor):
        w = w.dequantize()
    scale = getattr(layer, "scale_weight", None)  # v0.3.x scaled-fp8 layers scale in their forward
    if scale is not None:
        w = w * scale.to(device=w.device, dtype=w.dtype)
    return w, b


def provider(layer: nn.Module):
    """An elastic_core WeightFn for this layer."""
    return lambda x: effective_weights(layer, x)
