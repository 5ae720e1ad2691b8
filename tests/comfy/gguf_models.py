"""Tiny GGUF diffusion models, loaded through city96's ComfyUI-GGUF as a user loads them.

ComfyUI-GGUF lives beside the project: $ELASTIC_DIT_COMFYUI_GGUF_PATH, else ~/comfy/ComfyUI-GGUF.
It is loaded as ComfyUI loads any custom node pack (nodes.load_custom_node). The files are written with
the `gguf` package (on the registry; .ci/comfy-tests installs it): Q8_0 and Q4_0, which it quantizes in
numpy. It has no quantizer for K-quants, and a hand-written one is no test of anything; the tests compare
against the weights ComfyUI-GGUF dequantizes, so a K-quant tensor need not hold a quantized matrix at all.
Its Q4_K / Q6_K tensors hold random blocks: random bytes (every 4- or 6-bit code and packed sub-block
scale is valid) with each block's fp16 super-scale set to a finite size, which ComfyUI-GGUF reads and
dequantizes as it does any Q4_K / Q6_K file (Q4_K_M, the common Qwen-Image / Flux download, is these two).
"""
from __future__ import annotations

import asyncio
import os
import sys

import numpy as np
import torch

ENV = "ELASTIC_DIT_COMFYUI_GGUF_PATH"
QTYPES = ("Q8_0", "Q4_0")
K_QUANTS = ("Q4_K", "Q6_K")
# fp16 super-scales of a random block, set so the dequantized weights have a std of about 0.05:
# Q4_K: w = d * sc * q - dmin * m (sc, m 6-bit, q 4-bit; bytes 0-1 d, 2-3 dmin); Q6_K: w = d * sc * (q - 32)
# (sc int8, q 6-bit; bytes 208-209 d)
K_SCALES = {"Q4_K": {0: 2e-4, 2: 1.5e-3}, "Q6_K": {208: 3.6e-5}}
ARCH = {"qwen": "qwen_image", "flux": "flux"}


def find_gguf_pack() -> tuple[str | None, str]:
    tried = []
    for path, how in ((os.environ.get(ENV), ENV), (os.path.expanduser("~/comfy/ComfyUI-GGUF"), "~/comfy/ComfyUI-GGUF")):
        if path:
            tried.append(f"{how} ({path})")
            if os.path.isfile(os.path.join(path, "nodes.py")) and os.path.isfile(os.path.join(path, "loader.py")):
                return path, how
    return None, ("city96's ComfyUI-GGUF was not found; looked at " + ", ".join(tried)
                  + f". Set {ENV} to a checkout of github.com/city96/ComfyUI-GGUF.")


def load_gguf_pack(nodes, path: str):
    """ComfyUI-GGUF's node module, loaded by ComfyUI's own custom-node loader (once per process)."""
    if "UnetLoaderGGUF" not in nodes.NODE_CLASS_MAPPINGS:
        if not asyncio.run(nodes.load_custom_node(path)):
            raise ImportError(f"ComfyUI could not load ComfyUI-GGUF from {path} (see the log)")
    cls = nodes.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]
    return sys.modules[cls.__module__]


def write_gguf(path: str, state: dict[str, torch.Tensor], kind: str, qtype: str) -> str:
    """A GGUF file of the state dict: 2-D weights whose rows split into 32-value blocks quantized to
    `qtype`, everything else float32 (as ComfyUI-GGUF's own converter keeps small tensors)."""
    import gguf
    q = getattr(gguf.GGMLQuantizationType, qtype)
    block = gguf.GGML_QUANT_SIZES[q][0]
    w = gguf.GGUFWriter(path, arch=ARCH[kind])
    for i, (key, t) in enumerate(state.items()):
        a = t.detach().float().cpu().numpy()
        if a.ndim == 2 and a.shape[1] % block == 0 and a.shape[0] > 1:
            data = random_k_blocks(a.shape, qtype, seed=i) if qtype in K_QUANTS else gguf.quants.quantize(a, q)
            w.add_tensor(key, data, raw_dtype=q)  # bytes [rows, blocks * size]
        else:
            w.add_tensor(key, np.ascontiguousarray(a, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def random_k_blocks(shape: tuple[int, int], qtype: str, seed: int) -> np.ndarray:
    """Random `qtype` blocks for a [rows, cols] weight. -> bytes [rows, cols / 256 * block bytes]"""
    import gguf
    block, size = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, qtype)]
    rows, blocks = shape[0], shape[1] // block
    data = np.random.default_rng(seed).integers(0, 256, (rows, blocks, size), dtype=np.uint8)
    for at, scale in K_SCALES[qtype].items():
        data[:, :, at:at + 2] = np.full((rows, blocks, 1), scale, dtype=np.float16).view(np.uint8)
    return data.reshape(rows, blocks * size)


def dequantized_state(gguf_mod, path: str) -> dict[str, torch.Tensor]:
    """The float32 weights the GGUF file holds, dequantized by ComfyUI-GGUF itself."""
    loader = sys.modules[gguf_mod.__name__.rsplit(".", 1)[0] + ".loader"]
    dequant = sys.modules[gguf_mod.__name__.rsplit(".", 1)[0] + ".dequant"]
    sd = loader.gguf_sd_loader(path)
    return {k: dequant.dequantize_tensor(v, dtype=torch.float32).clone() for k, v in sd.items()}


def load_gguf_model(nodes, gguf_mod, path: str, kind: str, unet_config: dict | None = None):
    """The GGUF model as a user gets it from UnetLoaderGGUF. ComfyUI's model detection reads only the depth
    of a Qwen-Image or Flux state dict and fills in the real width (24 heads of 128), so a tiny model
    cannot be detected; it is built from its config with the same three steps as
    UnetLoaderGGUF.load_unet: ComfyUI-GGUF's GGMLOps as the model's operations, the weights its reader
    returns (GGMLTensors), and its GGUFModelPatcher. test_gguf.py checks on a real-width one-block
    Qwen-Image that this gives exactly what UnetLoaderGGUF itself gives."""
    import comfy.model_patcher
    from devtools import tiny_models as tm
    pkg = gguf_mod.__name__.rsplit(".", 1)[0]
    ops = sys.modules[pkg + ".ops"].GGMLOps()
    ops.Linear.dequant_dtype, ops.Linear.patch_dtype = None, None
    cfg = tm._config_class(kind)(unet_config)
    cfg.supported_inference_dtypes = [torch.float32]
    cfg.set_inference_dtype(torch.float32, None)
    cfg.custom_operations = ops
    model = cfg.get_model({}, device=tm.CPU)
    model.load_model_weights(sys.modules[pkg + ".loader"].gguf_sd_loader(path), "")
    model.diffusion_model.eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=tm.CPU, offload_device=tm.CPU)
    return gguf_mod.GGUFModelPatcher.clone(patcher)
