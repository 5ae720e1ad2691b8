"""The authors' released Qwen-Image E-DiT code, run on a tiny ComfyUI Qwen-Image's own weights, for
end-to-end comparisons with ComfyUI + this pack (tests/comfy/test_authors_parity.py,
devtools/authors_departures.py).

Their code lives beside the project, never in it: $ELASTIC_DIT_AUTHORS_PATH, else ~/comfy/Elastic-DiT.
Only its model file `diffsynth/models/qwen_image_dit.py` (and the `general_modules.py` it imports) is
loaded: the package's `__init__` and its pipeline pull in pandas, modelscope, transformers, ... The
blocks (their attention, MLPs, router call, skip / cache logic), routers, RoPE and timestep embedding
are theirs. Their full `QwenImageDiT` hard-codes the real width (3072 x 60 blocks), so its parts are
built here at the tiny width; `forward` below is the text-to-image path of their pipeline's
`model_fn_qwen_image` (no entity prompts, edit images or ControlNet), and `sample` is their
`cfg_guided_model_fn` (positive call, then negative) with their scheduler's Euler step, on ComfyUI's
sigma schedule (the schedule is the user's choice in ComfyUI, not the pack's).

Import only after ComfyUI was booted (devtools.comfy_boot.boot).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

import torch
from einops import rearrange
from safetensors.torch import save_file

ENV = "ELASTIC_DIT_AUTHORS_PATH"
MODEL_FILE = os.path.join("diffsynth", "models", "qwen_image_dit.py")
_PKG = "elastic_dit_authors_models"  # a private package name for their models directory


def find_authors() -> tuple[str | None, str]:
    """(path, how it was found) or (None, why not)."""
    tried = []
    for path, how in ((os.environ.get(ENV), ENV), (os.path.expanduser("~/comfy/Elastic-DiT"), "~/comfy/Elastic-DiT")):
        if not path:
            continue
        tried.append(f"{how} ({path})")
        if os.path.isfile(os.path.join(path, MODEL_FILE)):
            return path, how
    return None, ("the authors' Elastic-DiT code was not found; looked at " + ", ".join(tried or ["nothing"])
                  + f". Set {ENV} to a checkout of their repository (it holds {MODEL_FILE}).")


def load_module(path: str) -> types.ModuleType:
    """Their qwen_image_dit module, imported without running the diffsynth package's __init__."""
    name = f"{_PKG}.qwen_image_dit"
    if name in sys.modules:
        return sys.modules[name]
    models = os.path.join(path, "diffsynth", "models")
    pkg = types.ModuleType(_PKG)
    pkg.__path__ = [models]  # its relative import `.general_modules` resolves here
    sys.modules[_PKG] = pkg
    try:
        return importlib.import_module(name)
    except Exception:
        sys.modules.pop(_PKG, None)
        raise


class AuthorsDiT(torch.nn.Module):
    """Their DiT's parts at a tiny width, named as in their QwenImageDiT (= ComfyUI's keys)."""

    def __init__(self, mod, dim: int, layers: int, heads: int, head_dim: int, txt_dim: int, patch_ch: int,
                 axes_dim, router_hidden: int = 128):
        super().__init__()
        gm = sys.modules[f"{_PKG}.general_modules"]
        self.pos_embed = mod.QwenEmbedRope(theta=10000, axes_dim=list(axes_dim), scale_rope=True)
        self.time_text_embed = gm.TimestepEmbeddings(256, dim, diffusers_compatible_format=True, scale=1000,
                                                     align_dtype_to_timestep=False)
        self.txt_norm = gm.RMSNorm(txt_dim, eps=1e-6)
        self.img_in, self.txt_in = torch.nn.Linear(patch_ch, dim), torch.nn.Linear(txt_dim, dim)
        self.transformer_blocks = torch.nn.ModuleList(
            [mod.QwenImageTransformerBlock(dim=dim, num_attention_heads=heads, attention_head_dim=head_dim)
             for _ in range(layers)])
        self.gate_mlps = torch.nn.ModuleList([mod.RouteGate(dim, router_hidden) for _ in range(layers)])
        self.norm_out = gm.AdaLayerNorm(dim, single=True)
        self.proj_out = torch.nn.Linear(dim, patch_ch)

    def forward(self, latents, timestep, prompt_emb, trace: list | None = None):
        """Their model_fn_qwen_image, text-to-image path. latents [1, C, H, W]; timestep [1] (x1000)."""
        height, width = latents.shape[2] * 8, latents.shape[3] * 8
        img_shapes = [(1, latents.shape[2] // 2, latents.shape[3] // 2)]
        txt_seq_lens = [prompt_emb.shape[1]]
        timestep = timestep / 1000
        image = rearrange(latents, "(B N) C (H P) (W Q) -> B (N H W) (C P Q)", H=height // 16, W=width // 16, P=2,
                          Q=2, N=1)
        image = self.img_in(image)
        conditioning = self.time_text_embed(timestep, image.dtype)
        text = self.txt_in(self.txt_norm(prompt_emb))
        rope = self.pos_embed(img_shapes, txt_seq_lens, device=latents.device)
        for block, gate in zip(self.transformer_blocks, self.gate_mlps):
            text, image, prob, p_soft = block(image=image, text=text, temb=conditioning, image_rotary_emb=rope,
                                              attention_mask=None, gate_mlp=gate)
            if trace is not None:
                trace.append((float(prob.mean()), None if p_soft is None else int(p_soft.argmax(-1)[0])))
        image = self.proj_out(self.norm_out(image, conditioning))
        return rearrange(image, "B (N H W) (C P Q) -> (B N) C (H P) (W Q)", H=height // 16, W=width // 16, P=2, Q=2,
                         B=1)


def authors_dit(mod, comfy_dm, router_state: dict[str, torch.Tensor], router_hidden: int = 128) -> AuthorsDiT:
    """Their DiT holding the ComfyUI model's weights (every key must match) and the routers
    (router_state: `gate_mlps.{i}.<sub>` tensors, the released layout)."""
    blk = comfy_dm.transformer_blocks[0]
    dim = blk.img_mlp.net[0].proj.in_features
    heads = blk.attn.heads
    dit = AuthorsDiT(mod, dim, len(comfy_dm.transformer_blocks), heads, dim // heads, comfy_dm.txt_in.in_features,
                     comfy_dm.img_in.in_features, comfy_dm.pe_embedder.axes_dim, router_hidden)
    state = {**{k: v.float() for k, v in comfy_dm.state_dict().items()}, **router_state}
    missing, unexpected = dit.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights do not line up: missing {missing[:6]}, unexpected {unexpected[:6]}")
    return dit.eval()


def released_router_state(layers: int, dim: int, hidden: int = 128, seed: int = 0, gates=None,
                          width_std: float = 3.0) -> dict[str, torch.Tensor]:
    """Routers in the released layout. gates[i]: a fixed gate probability for block i (its gate head's
    weight zeroed), None: a random gate head. Width heads are random, so widths vary by step and row."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s, std=0.05: torch.randn(*s, generator=g) * std  # noqa: E731
    out = {}
    for i in range(layers):
        p = None if gates is None else gates[i]
        gate_w = rand(1, hidden, std=0.3) if p is None else torch.zeros(1, hidden)
        gate_b = torch.zeros(1) if p is None else torch.tensor([float(torch.logit(torch.tensor(p)))])
        out.update({f"gate_mlps.{i}.img_mod.1.weight": rand(3 * dim, dim), f"gate_mlps.{i}.img_mod.1.bias": rand(3 * dim),
                    f"gate_mlps.{i}.out.0.weight": rand(hidden, dim, std=0.3), f"gate_mlps.{i}.out.0.bias": rand(hidden),
                    f"gate_mlps.{i}.out.2.weight": gate_w, f"gate_mlps.{i}.out.2.bias": gate_b,
                    f"gate_mlps.{i}.width_head.weight": rand(4, hidden, std=width_std),
                    f"gate_mlps.{i}.width_head.bias": torch.zeros(4)})
    return out


def write_released(path: str, backbone: dict, router_state: dict) -> str:
    """A released-layout checkpoint: backbone weights (a state dict, may be empty) plus the routers."""
    t = {**{k: v.detach().float().contiguous() for k, v in backbone.items()},
         **{k: v.contiguous() for k, v in router_state.items()}}
    save_file(t, path, metadata={"format": "pt"})
    return path


@torch.no_grad()
def sample(dit: AuthorsDiT, noise, sigmas, pos, neg, cfg: float, timestep_dtype=torch.float32, trace=None):
    """Their CFG loop (positive, then negative call; Euler step) over ComfyUI's sigmas, from `noise`
    [1, C, H, W] (ComfyUI's first sigma is 1, so its starting latent is the noise itself).
    timestep_dtype: their pipeline passes bf16 timesteps; float32 isolates everything else."""
    x = noise.clone()
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        t = (torch.tensor([float(s)]) * 1000).to(timestep_dtype)
        v_pos = dit(x, t, pos, trace)
        v_neg = dit(x, t, neg, trace)
        v = v_neg + cfg * (v_pos - v_neg)
        x = x + v * (float(s_next) - float(s))
    return x
