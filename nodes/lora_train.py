"""The LoRA that Train Elastic Router learns with the routers (`lora_rank` > 0), on ComfyUI's side.

- Which layers: every attention and MLP linear of the blocks the routers serve (not the modulation).
- How it reaches the model: a weight wrapper per layer on the training CLONE (ComfyUI applies it inside
  its cast path, after any LoRA of the user's model; MLP twins then slice or mask what comes out), so
  training sees exactly W + up @ down, and the user's model never changes.
- Where it goes: models/loras/<router file name>, in the layout ComfyUI's LoraLoaderModelOnly reads;
  metadata names the router file, the router file's provenance names the LoRA.
- What a resume checks: the state's LoRA has this model's layers at this rank, and the model does not
  already carry that LoRA (loaded back in with LoraLoaderModelOnly, it would count twice).
"""
from __future__ import annotations

import os

import torch
from safetensors import safe_open

import comfy.sd
import comfy.utils
import folder_paths

from ..elastic_core.lora import LoraSet, LoraTarget, check_layout, find_targets, state_lora

LORA_FOLDER = "loras"


def lora_targets(dm, refs) -> list[LoraTarget]:
    return find_targets((r.path, dm.get_submodule(r.path)) for r in refs)


def lora_file(router_file: str) -> str:
    """models/loras/<the router file's name> (for a training state file too)."""
    name = os.path.basename(router_file).removesuffix(".train_state")
    return os.path.join(folder_paths.get_folder_paths(LORA_FOLDER)[0], name)


def check_resume(state_file: str, meta: dict, model, targets: list[LoraTarget], rank: int) -> None:
    """The saved training state continues this run, or an error saying why not; before any sampling."""
    saved = state_lora(meta)
    if saved is None and rank:
        raise ValueError(f"resume: {state_file} trained routers only; set lora_rank 0 to resume it, or train a "
                         "LoRA under a new file name")
    if saved is not None and saved[0] != rank:
        raise ValueError(f"resume: {state_file} trains a LoRA of rank {saved[0]}; set lora_rank {saved[0]} to "
                         f"resume it (got {rank})")
    if saved is None:
        return
    check_layout(state_file, {t.path: (t.out_features, t.in_features, rank) for t in saved[1]}, targets, rank)
    if carries(model, state_file, targets[0].path):
        raise ValueError(f"resume: this MODEL already has the LoRA being trained ({lora_file(state_file)}) loaded; "
                         "connect the plain model: training learns the LoRA on top of it")


def carries(model, state_file: str, path: str) -> bool:
    """Does the model's patch list hold the LoRA of this training state (its first layer's up matrix)?"""
    with safe_open(state_file, "pt") as f:
        up = f.get_tensor("adapter.loras.0.up")  # [out, r]
    for patch in model.patches.get(f"diffusion_model.{path}.weight", []):
        v = patch[1]  # a weight adapter (.weights = (up, down, alpha, ...)), or an older ("lora", (up, ...))
        weights = getattr(v, "weights", None) or (v[1] if isinstance(v, tuple) and len(v) == 2 else None)
        first = weights[0] if weights else None
        if isinstance(first, torch.Tensor) and first.shape == up.shape and torch.allclose(first.float().cpu(), up):
            return True
    return False


def install(m, lora: LoraSet) -> None:
    """The LoRA as weight wrappers on the clone `m` (after whatever wrappers are there: the frozen copy)."""
    for path, module in lora.items():
        m.add_weight_wrapper(f"diffusion_model.{path}.weight", module)


def with_lora(model, path: str):
    """The user's model with the saved LoRA, loaded exactly as LoraLoaderModelOnly loads it (a clone)."""
    return comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(path, safe_load=True), 1.0, 0)[0]

