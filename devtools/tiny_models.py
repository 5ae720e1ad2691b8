"""Random-weight models built from ComfyUI's own comfy.ldm classes, sampled with comfy.sample: tiny ones
for the tests, real-width ones for the benchmark.

Import only after ComfyUI was booted (devtools.comfy_boot.boot, or the tests' `comfy` fixture).
"""
from __future__ import annotations

import dataclasses
import math

import torch

import comfy.latent_formats
import comfy.ldm.chroma.model
import comfy.ldm.flux.model
import comfy.model_base
import comfy.model_patcher
import comfy.sample
import comfy.supported_models_base

CPU = torch.device("cpu")


def _with_txt_ids(params_cls, cfg: dict) -> dict:
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(params_cls)}:  # v0.8: a required field
        cfg["txt_ids_dims"] = []
    return cfg


def flux_config(depth=2, single=2) -> dict:
    return _with_txt_ids(comfy.ldm.flux.model.FluxParams, dict(
        image_model="flux", in_channels=16, out_channels=16, vec_in_dim=8, context_in_dim=32, hidden_size=64,
        mlp_ratio=4.0, num_heads=2, depth=depth, depth_single_blocks=single, axes_dim=[8, 12, 12], theta=10000,
        patch_size=2, qkv_bias=True, guidance_embed=True))


def chroma_config(depth=2, single=2) -> dict:
    cfg = _with_txt_ids(comfy.ldm.chroma.model.ChromaParams, dict(
        image_model="chroma", in_channels=64, out_channels=64, context_in_dim=32, hidden_size=64, mlp_ratio=4.0,
        num_heads=2, depth=depth, depth_single_blocks=single, axes_dim=[8, 12, 12], theta=10000, patch_size=2,
        qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=32, n_layers=1))
    if "vec_in_dim" in {f.name for f in dataclasses.fields(comfy.ldm.chroma.model.ChromaParams)}:
        cfg["vec_in_dim"] = None
    return cfg


def qwen_config(layers=3) -> dict:
    return dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=layers,
                attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(8, 12, 12))


def _config_class(kind: str):
    model_cls = {"flux": comfy.model_base.Flux, "qwen": comfy.model_base.QwenImage, "chroma": comfy.model_base.Chroma}[kind]
    latent = comfy.latent_formats.Wan21 if kind == "qwen" else comfy.latent_formats.Flux

    class Tiny(comfy.supported_models_base.BASE):
        unet_config = {"image_model": {"flux": "flux", "qwen": "qwen_image", "chroma": "chroma"}[kind]}
        unet_extra_config = {}
        sampling_settings = {"multiplier": 1.0, "shift": 1.15} if kind == "qwen" else {}
        latent_format = latent
        supported_inference_dtypes = [torch.float32]

        def get_model(self, state_dict, prefix="", device=None):
            return model_cls(self, device=device)
    return Tiny


def build_from_config(kind: str, unet: dict, seed: int = 0, std: float = 0.05, device=CPU,
                      dtype=torch.float32, manual_cast=None) -> comfy.model_patcher.ModelPatcher:
    """manual_cast: a compute dtype for weights stored in another (e.g. fp8 storage, float32 compute)."""
    cfg = _config_class(kind)(unet)
    cfg.supported_inference_dtypes = [dtype]
    cfg.set_inference_dtype(dtype, manual_cast)
    model = cfg.get_model({}, device=device)
    torch.manual_seed(seed)
    with torch.no_grad():  # comfy ops skip init: fill every weight (drawn in float32, stored as the weight's dtype)
        for p in model.diffusion_model.parameters():
            p.copy_(torch.empty(p.shape, device=device).normal_(0.0, std))
    model.diffusion_model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def build(kind: str, seed: int = 0, std: float = 0.05, dtype=torch.float32, manual_cast=None,
          **dims) -> comfy.model_patcher.ModelPatcher:
    if kind in SUPPORTED:  # newer families: ComfyUI's own supported-model class builds them
        cls, config, extra = SUPPORTED[kind]
        return build_supported(cls, config(**{**extra, **dims}), seed, std, dtype)
    cfg = {"flux": flux_config, "qwen": qwen_config, "chroma": chroma_config}[kind](**dims)
    return build_from_config(kind, cfg, seed, std, dtype=dtype, manual_cast=manual_cast)


def conds(kind: str, batch: int = 1, seed: int = 0, tokens: int = 8, ctx: int = 32, device=CPU, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731

    def extra():
        if kind in ("qwen", "zimage") or kind.startswith("wan"):
            return {}
        return {"pooled_output": rand(batch, 8), "guidance": 3.5 if kind in ("flux", "flux2") else 0.0}
    return [[rand(batch, tokens, ctx), extra()]], [[rand(batch, tokens, ctx), extra()]]


def latent(kind: str, batch: int = 1, size: int = 16) -> torch.Tensor:
    if kind == "qwen":
        return torch.zeros(batch, 16, 1, size, size)
    if kind.startswith("wan"):  # a video latent: 2 latent frames of size / 2, half the tokens of a 16x16 image
        return torch.zeros(batch, 48 if kind == "wan22_5b" else 16, 2, size // 2, size // 2)
    if kind.startswith("flux2"):  # Flux.2's VAE: 128 channels at 1/16 (patch size 1); half the side, as many tokens / 4
        return torch.zeros(batch, 128, size // 2, size // 2)
    return torch.zeros(batch, 16, size, size)


def sample(model, kind: str, cfg: float = 3.5, steps: int = 4, batch: int = 1, size: int = 16, seed: int = 0,
           sampler: str = "euler", cond_seed: int = 0, tokens: int = 8, device=CPU, dtype=torch.float32,
           **kw) -> torch.Tensor:
    lat = latent(kind, batch, size)
    ctx = context_dim(model)
    pos, neg = conds(kind, batch, cond_seed, tokens, ctx, device, dtype)
    noise = comfy.sample.prepare_noise(lat, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, "simple", pos, neg, lat, seed=seed,
                               disable_pbar=True, **kw)


def context_dim(model) -> int:
    """Width of the text-encoder tokens the model reads."""
    dm = model.get_model_object("diffusion_model")
    if hasattr(dm, "text_embedding"):  # Wan
        return dm.text_embedding[0].in_features
    return dm.txt_in.in_features if hasattr(dm, "txt_in") else dm.cap_embedder[1].in_features


def logit(p: float) -> float:
    return math.log(p / (1 - p)) if 0 < p < 1 else (30.0 if p >= 1 else -30.0)


def make_routers(pack, model, seed: int = 0, layout: str = "released"):
    """Open, full-width routers of `layout` for every block of `model`, as the pack's RouterCheckpoint."""
    ec = pack.elastic_core
    dm = model.get_model_object("diffusion_model")
    adapter = pack.nodes.adapters.adapter_for(dm)
    refs = adapter.blocks(dm)
    routers = ec.router.RouterSet(adapter.router_config(dm).with_layout(layout), [r.spec.name for r in refs])
    routers.init_full_capacity(generator=torch.Generator().manual_seed(seed))
    meta = ec.checkpoint.RouterMeta.for_routers(routers, adapter.family)
    return ec.checkpoint.RouterCheckpoint(routers, meta, "test-routers")


# -- Hunyuan3D (image-to-3D): ComfyUI's own supported-model classes, a 3D latent [B, 64, L] ---------

def hunyuan3d_config(depth=2, single=2) -> dict:
    """Hunyuan3D 2.0 (`Hunyuan3Dv2`: Flux double / single blocks, no RoPE)."""
    return dict(image_model="hunyuan3d2", in_channels=64, context_in_dim=32, hidden_size=64, mlp_ratio=4.0,
                num_heads=2, depth=depth, depth_single_blocks=single, qkv_bias=True, guidance_embed=False)


def hunyuan3d21_config(depth=5, moe=2, experts=4, top_k=2) -> dict:
    """Hunyuan3D 2.1 (`HunYuanDiTPlain`): blocks after depth // 2 take a long skip, the last `moe` an
    MoE feed-forward of `experts` routed experts (top_k per token) plus a shared one."""
    return dict(image_model="hunyuan3d2_1", in_channels=64, hidden_size=64, context_dim=32, depth=depth,
                num_heads=2, qkv_bias=False, num_moe_layers=moe, num_experts=experts, moe_top_k=top_k,
                guidance_cond_proj_dim=None)


HUNYUAN3D_KINDS = {"hunyuan3d": hunyuan3d_config, "hunyuan3d21": hunyuan3d21_config}


def build_supported(cls_name: str, unet: dict, seed: int = 0, std: float = 0.05, dtype=torch.float32,
                    device=CPU) -> comfy.model_patcher.ModelPatcher:
    """A random-weight model of ComfyUI's supported-model class `cls_name` (comfy.supported_models)."""
    import comfy.supported_models
    cfg = getattr(comfy.supported_models, cls_name)(unet)
    cfg.supported_inference_dtypes = [dtype]
    cfg.set_inference_dtype(dtype, None)
    model = cfg.get_model({}, device=device)
    torch.manual_seed(seed)
    with torch.no_grad():  # comfy ops skip init: fill every weight
        for p in model.diffusion_model.parameters():
            p.copy_(torch.empty(p.shape, device=device).normal_(0.0, std))
    model.diffusion_model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def build_3d(kind: str, seed: int = 0, std: float = 0.05, dtype=torch.float32, device=CPU,
             **dims) -> comfy.model_patcher.ModelPatcher:
    """A random-weight Hunyuan3D model of `kind` ("hunyuan3d" 2.0, "hunyuan3d21" 2.1)."""
    cls = "Hunyuan3Dv2" if kind == "hunyuan3d" else "Hunyuan3Dv2_1"
    return build_supported(cls, HUNYUAN3D_KINDS[kind](**dims), seed, std, dtype, device)


def conds_3d(batch: int = 1, seed: int = 0, tokens: int = 8, ctx: int = 32, device=CPU, dtype=torch.float32):
    """(positive, negative) image-condition CONDITIONINGs [B, tokens, ctx], as Hunyuan3Dv2Conditioning
    makes them (random here; the real negative is zeros)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    return [[rand(batch, tokens, ctx), {}]], [[rand(batch, tokens, ctx), {}]]


def latent_3d(batch: int = 1, resolution: int = 32) -> torch.Tensor:
    """What EmptyLatentHunyuan3Dv2 makes: zeros [B, 64, resolution]."""
    return torch.zeros(batch, 64, resolution)


def context_dim_3d(model) -> int:
    dm = model.get_model_object("diffusion_model")
    return dm.cond_in.in_features if hasattr(dm, "cond_in") else dm.context_dim


def sample_3d(model, cfg: float = 3.5, steps: int = 4, batch: int = 1, resolution: int = 32, seed: int = 0,
              sampler: str = "euler", cond_seed: int = 0, tokens: int = 8, **kw) -> torch.Tensor:
    """Sample a Hunyuan3D model through comfy.sample. Hunyuan3D 2.1 on ComfyUI < 0.33 needs cfg > 1
    (its forward splits every batch into cond / uncond halves)."""
    lat = latent_3d(batch, resolution)
    pos, neg = conds_3d(batch, cond_seed, tokens, context_dim_3d(model))
    noise = comfy.sample.prepare_noise(lat, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, "simple", pos, neg, lat, seed=seed,
                               disable_pbar=True, **kw)


# -- families of newer ComfyUI (v0.8+): built from comfy.supported_models, latents and conds as above ----

def flux2_config(depth=2, single=2, klein=False) -> dict:
    """Flux.2 (dev: guidance embedded; Klein: not): Flux's class with global modulation, gated MLPs."""
    return dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=32,
                hidden_size=64, mlp_ratio=3.0, num_heads=2, depth=depth, depth_single_blocks=single,
                axes_dim=[8, 8, 8, 8], theta=2000, patch_size=1, qkv_bias=False, guidance_embed=not klein,
                txt_ids_dims=[3], global_modulation=True, mlp_silu_act=True, ops_bias=False,
                default_ref_method="index", ref_index_scale=10.0)


def zimage_config(layers=3, refiners=1, z_image=True) -> dict:
    """Z-Image (z_image=False: Lumina 2.0's modulation): NextDiT, D = 256 (Z-Image's adaLN reads a
    256-wide timestep embedding as min(D, 256) channels, so D >= 256), SwiGLU feed-forwards of 688 channels."""
    return dict(image_model="lumina2", patch_size=2, in_channels=16, dim=256, n_layers=layers, n_refiner_layers=refiners,
                n_heads=4, n_kv_heads=4, multiple_of=16, ffn_dim_multiplier=8.0 / 3.0, norm_eps=1e-5, qk_norm=True,
                cap_feat_dim=32, axes_dims=[16, 24, 24], axes_lens=[256, 64, 64], rope_theta=256.0,
                z_image_modulation=z_image, time_scale=1000.0 if z_image else 1.0,
                pad_tokens_multiple=32 if z_image else None)


def wan_config(layers=3, channels=16) -> dict:
    """Wan text-to-video (WanModel): video tokens of a [B, C, T, H, W] latent, patch (1, 2, 2); 48
    channels: Wan 2.2 TI2V 5B's latent."""
    return dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=channels, dim=64,
                ffn_dim=128, freq_dim=256, text_dim=32, out_dim=channels, num_heads=2, num_layers=layers, eps=1e-6)


SUPPORTED = {"flux2": ("Flux2", flux2_config, {}), "flux2_klein": ("Flux2", flux2_config, {"klein": True}),
             "zimage": ("ZImage", zimage_config, {}), "wan": ("WAN21_T2V", wan_config, {}),
             "wan22_5b": ("WAN22_T2V", wan_config, {"channels": 48})}


def missing(kind: str) -> str | None:
    """Why this ComfyUI cannot build `kind`, or None."""
    import comfy.supported_models
    if kind in SUPPORTED and not hasattr(comfy.supported_models, SUPPORTED[kind][0]):
        return f"this ComfyUI has no {SUPPORTED[kind][0]} model class (comfy.supported_models)"
    return None
