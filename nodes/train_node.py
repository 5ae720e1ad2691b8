"""Train Elastic Router: routers for the loaded model (any family the pack supports), trained by
dense-teacher distillation on the user's conditionings; written to models/elastic_routers/.

The model is cloned; training happens on the clone through the same hooks as sampling, with the
backbone frozen, or (lora_rank > 0) with a LoRA on its attention and MLP linears that learns with the
routers, saved to models/loras/ under the router file's name (nodes/lora_train.py). Cancel stops after
the current step: what was trained so far is saved (with the optimizer state, so `resume` can go on),
then ComfyUI reports the interruption.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths

from ..elastic_core.config import COMPACT_RANK, LAYOUTS, ElasticConfig
from ..elastic_core.distributed import barrier, from_rank0, init_from_env
from ..elastic_core.checkpoint import RouterCheckpoint, RouterMeta, load_routers, save_routers
from ..elastic_core.lora import JointTrainer, LoraSet, check_rank, save_lora
from ..elastic_core.policy import Policy
from ..elastic_core.router import RouterSet
from ..elastic_core.train import RouterTrainer, TrainConfig
from .adapters import adapter_for
from . import lora_train
from .files import FOLDER, taken
from .loader_node import ROUTER_TYPE
from .rope_grad import ensure_rope_grad
from .patch import HOLDER_KEY, RUN_KEY, ElasticPatch, check_compatible, install
from .train_state import TrainSampler, TrainState, dense_trajectories, perf_and_aux

log = logging.getLogger("elastic_dit")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,100}$")
STATE_SUFFIX = ".train_state"  # beside the router file; not a .safetensors name, so the loader lists only routers


def router_path(filename: str, resume: bool, lora: bool = False) -> str:
    """models/elastic_routers/<filename>.safetensors; a name taken in any elastic_routers folder (or, with
    `lora`, in any loras folder) is never reused unless resuming: a number is added instead."""
    stem = filename[:-12] if filename.lower().endswith(".safetensors") else filename
    if not _NAME.match(stem) or ".." in stem:
        raise ValueError(f"filename {filename!r}: expected a plain file name (letters, digits, space, _ . -), "
                         "no folders")
    folder = folder_paths.get_folder_paths(FOLDER)[0]
    os.makedirs(folder, exist_ok=True)  # a fresh ComfyUI has no models/elastic_routers yet
    path = os.path.join(folder, stem + ".safetensors")
    n = 0
    while not resume and _in_use(os.path.basename(path), lora):
        n += 1
        path = os.path.join(folder, f"{stem}_{n:05d}.safetensors")
    return path


def _in_use(name: str, lora: bool) -> bool:
    return (taken(FOLDER, name) or taken(FOLDER, name + STATE_SUFFIX)
            or (lora and taken(lora_train.LORA_FOLDER, name)))


def _frozen_weights(m, dm) -> None:
    """Make the clone's backbone a constant for autograd, without touching the user's model.

    - Gradients must reach the routers only: ComfyUI's parameters may have requires_grad set, and a
      backward through them would fill the user's model with .grad tensors.
    - Tensors made under torch.inference_mode (how ComfyUI loads models) cannot be saved for backward.
    comfy.ops layers get a weight wrapper (applied inside their cast, per call: a detached view, or a
    plain copy of an inference tensor, so no lasting second copy of the weights); other parameters
    (norm scales: small) are object-patched with detached copies. ComfyUI undoes both when it
    unpatches the clone.
    """
    for name, module in dm.named_modules():
        cast = hasattr(module, "weight_function")
        for pname, p in module.named_parameters(recurse=False):
            key = f"diffusion_model.{name}.{pname}" if name else f"diffusion_model.{pname}"
            if cast and pname in ("weight", "bias"):
                m.add_weight_wrapper(key, _constant)
            else:
                with torch.inference_mode(False), torch.no_grad():
                    m.add_object_patch(key, torch.nn.Parameter(p.clone(), requires_grad=False))


def _constant(w):
    if not isinstance(w, torch.Tensor):
        return w
    if w.is_inference():
        with torch.no_grad():
            return w.clone()
    return w.detach()


class ElasticDiTTrainRouter:
    @classmethod
    def INPUT_TYPES(cls):
        f = lambda d, lo, hi, st, tip: ("FLOAT", {"default": d, "min": lo, "max": hi, "step": st, "tooltip": tip})  # noqa: E731
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The plain model (Qwen-Image, Flux.1, Chroma, Hunyuan3D) to train routers for. "
                                   "It is cloned, never changed."}),
                "positive": ("CONDITIONING", {"tooltip": "Prompts like the ones you will sample with."}),
                "latent_image": ("LATENT", {"tooltip": "An empty latent of the size you will sample at."}),
                "steps": ("INT", {"default": 200, "min": 1, "max": 100000, "tooltip": "Training steps."}),
                "learning_rate": f(1e-3, 1e-6, 1.0, 1e-5, "Adam learning rate of the routers."),
                "rho_g": f(0.5, 0.0, 1.0, 0.01, "Target mean gate: the share of blocks that should run."),
                "rho_w": f(0.6, 0.25, 1.0, 0.01, "Target mean MLP width of the blocks that run."),
                "filename": ("STRING", {"default": "my_model_router", "tooltip": "Saved as models/elastic_routers/"
                                        "<filename>.safetensors (a number is added rather than overwrite)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff,
                                 "tooltip": "Seeds the routers' start, the teacher runs' noise and the training draws."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Needed when cfg > 1."}),
                "cfg": f(1.0, 1.0, 30.0, 0.1, "The CFG you will sample with (1 for Flux-dev, ~4 for Qwen-Image)."),
                "sampling_steps": ("INT", {"default": 20, "min": 2, "max": 200,
                                           "tooltip": "Steps of the dense teacher runs (your sampling steps)."}),
                "teacher_runs": ("INT", {"default": 4, "min": 1, "max": 256,
                                         "tooltip": "Dense sampling runs (seeds) whose states the routers train on."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                       "tooltip": "Teacher states per training step (more: smoother, slower, more memory). "
                                       "Under torchrun: the global batch, each process takes its share."}),
                "gradient_checkpointing": ("BOOLEAN", {"default": True, "tooltip": "Recompute each block in the "
                                           "backward pass: far less memory, about 1.3x the time."}),
                "save_every": ("INT", {"default": 50, "min": 1, "max": 100000,
                                       "tooltip": "Save the routers every this many steps (and at the end or on Cancel)."}),
                "resume": ("BOOLEAN", {"default": False, "tooltip": "Go on from <filename>'s saved training state."}),
                "lora_rank": ("INT", {"default": 0, "min": 0, "max": 1024, "tooltip": "0: routers only (the backbone "
                              "frozen). N: a rank-N LoRA on the blocks' attention and MLP linears learns with the "
                              "routers, saved as models/loras/<filename>.safetensors for LoraLoaderModelOnly."}),
                "lora_learning_rate": f(1e-4, 1e-7, 1.0, 1e-6, "Adam learning rate of the LoRA."),
                # appended last: saved workflows list widget values in input order
                "router_layout": (list(LAYOUTS), {"default": "compact", "tooltip": "compact: each router reads "
                                  f"its conditioning through a rank-{COMPACT_RANK} modulation (0.7 M parameters at "
                                  "Flux width; router file format 2). released: the authors' layout, a full "
                                  "modulation layer per router (28.7 M parameters at Flux width, ~40x the "
                                  "training memory for the routers; format 1). Resume with the layout you started with."}),
            },
        }

    RETURN_TYPES = (ROUTER_TYPE, "MODEL")
    RETURN_NAMES = ("router", "model")
    OUTPUT_TOOLTIPS = ("The trained routers, saved and ready for Apply Elastic DiT.",
                       "The model the routers were trained for: the input model, with the trained LoRA loaded "
                       "(as LoraLoaderModelOnly loads it) when lora_rank > 0.")
    OUTPUT_NODE = True  # it writes a file: a graph that only trains can be queued
    FUNCTION = "train"
    CATEGORY = "Elastic DiT"
    DESCRIPTION = ("Trains E-DiT routers for this model by distillation from its own dense output; "
                   "no image data set needed.")

    def train(self, model, positive, latent_image, steps, learning_rate, rho_g, rho_w, filename, seed,
              negative=None, cfg=1.0, sampling_steps=20, teacher_runs=4, batch_size=1,
              gradient_checkpointing=True, save_every=50, resume=False, lora_rank=0, lora_learning_rate=1e-4,
              router_layout="compact"):
        job = TrainJob.validate(model, positive, negative, latent_image, cfg, filename, resume, TrainConfig(
            steps=steps, lr=learning_rate, rho_g=rho_g, rho_w=rho_w, grad_checkpoint=gradient_checkpointing),
            sampling_steps, teacher_runs, batch_size, save_every, seed, lora_rank, lora_learning_rate, router_layout)
        t0 = time.perf_counter()
        teacher = dense_trajectories(model, job.positive, job.negative, job.latent, cfg,
                                     sampling_steps, teacher_runs, seed)
        log.info("Elastic DiT training: %d teacher states from %d dense runs in %.1f s",
                 len(teacher), teacher_runs, time.perf_counter() - t0)
        loop = TrainLoop(job, teacher)
        run_student(job, loop)
        barrier()  # under torchrun: rank 0's file is written before any rank reads it
        comfy.model_management.throw_exception_if_processing_interrupted()
        if loop.trainer.history:
            last = loop.trainer.history[-1]
            log.info("Elastic DiT: trained %s in %.0f s (mean gate %.3f, mean width %.3f)", job.path,
                     time.perf_counter() - t0, last["mean_gate"], last["mean_width"])
        return load_routers(job.path), lora_train.with_lora(model, job.lora_path) if job.lora_rank else model


@dataclass(frozen=True)
class TrainJob:
    """The node's inputs, checked: everything that can be wrong is found before any sampling."""
    model: object  # the user's ModelPatcher (never changed)
    latent: torch.Tensor  # [1, C, ...] one empty latent of the size to train at
    adapter: object
    refs: list
    positive: list
    negative: list
    cfg: float
    config: TrainConfig
    path: str  # the router file; the optimizer state goes to path + STATE_SUFFIX
    resume: bool
    batch_size: int
    save_every: int
    seed: int
    provenance: dict
    lora_rank: int  # 0: routers only
    lora_lr: float
    lora_targets: list  # the LoraTargets of this model's blocks
    layout: str = "compact"  # of the routers: "compact" or "released"

    @property
    def state_file(self) -> str:
        return self.path + STATE_SUFFIX

    @property
    def lora_path(self) -> str:
        return lora_train.lora_file(self.path)

    @classmethod
    def validate(cls, model, positive, negative, latent_image, cfg, filename, resume, config: TrainConfig,
                 sampling_steps, teacher_runs, batch_size, save_every, seed, lora_rank=0,
                 lora_lr=1e-4, layout="compact") -> "TrainJob":
        if HOLDER_KEY in model.model_options.get("transformer_options", {}):
            raise ValueError("this MODEL already comes from Apply Elastic DiT; train on the plain model")
        dm = model.get_model_object("diffusion_model")
        adapter = adapter_for(dm)  # a clear error for families the pack does not know
        refs = adapter.blocks(dm)
        if cfg > 1.0 and negative is None:
            raise ValueError(f"cfg {cfg} needs a negative conditioning (connect one, or set cfg to 1)")
        if not isinstance(latent_image, dict) or "samples" not in latent_image:
            raise ValueError("latent_image must be a LATENT (e.g. from Empty Latent Image)")
        if layout not in LAYOUTS:
            raise ValueError(f"router_layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        targets = lora_train.lora_targets(dm, refs)
        if lora_rank:
            check_rank(targets, lora_rank)  # a ValueError naming the layer that cannot hold the rank
        rank, size = init_from_env()  # under torchrun: DDP, each rank a share of every batch, rank 0 saves
        if batch_size % size:
            raise ValueError(f"batch_size {batch_size} does not split over {size} processes (torchrun); use a "
                             f"multiple of {size}: it is the global batch, each process takes its share")
        path = from_rank0(router_path(filename, resume, lora=bool(lora_rank)))
        if resume and not os.path.isfile(path + STATE_SUFFIX):
            raise FileNotFoundError(f"resume: no training state {path + STATE_SUFFIX}; train without resume first")
        if resume:  # the saved routers (and LoRA) must be this model's, of this layout
            saved = load_routers(path)
            check_compatible(adapter, dm, refs, saved)
            if saved.meta.router.layout != layout:
                raise ValueError(f"resume: {path} holds {saved.meta.router.layout}-layout routers, but router_layout "
                                 f"is {layout!r}; set router_layout to {saved.meta.router.layout!r} to resume it, "
                                 "or train a new file")
            lora_train.check_resume(path + STATE_SUFFIX, _state_meta(path + STATE_SUFFIX), model, targets, lora_rank)
        provenance = {"trainer": "Train Elastic Router (dense-teacher distillation)", "steps": str(config.steps),
                      "cfg": str(cfg), "sampling_steps": str(sampling_steps), "teacher_runs": str(teacher_runs)}
        if lora_rank:
            provenance.update(lora=os.path.basename(lora_train.lora_file(path)), lora_rank=str(lora_rank))
        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"][:1])
        return cls(model, latent, adapter, refs, positive, negative if negative is not None else positive, cfg,
                   config, path, resume, batch_size, save_every, seed, provenance, lora_rank, lora_lr, targets, layout)

    def new_routers(self) -> tuple[RouterSet, RouterMeta]:
        dm = self.model.get_model_object("diffusion_model")
        with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode; these tensors will train
            routers = RouterSet(self.adapter.router_config(dm).with_layout(self.layout), [r.spec.name for r in self.refs]).init_full_capacity(
                generator=torch.Generator().manual_seed(self.seed))
        defaults = {k: v for k, v in ElasticConfig(tau=self.config.tau).to_dict().items()
                    if k in ("tau", "delta", "max_reuse", "cache_start", "cache_end")}
        meta = RouterMeta.for_routers(routers, self.adapter.family, rho_g=self.config.rho_g, rho_w=self.config.rho_w,
                                      defaults=defaults, provenance=self.provenance)
        n = sum(p.numel() for p in routers.parameters())
        log.info("Elastic DiT training: %d routers, %.1f M parameters (%.2f GB with gradients and Adam state)",
                 len(routers), n / 1e6, n * 16 / 1e9)
        return routers, meta

    def new_lora(self) -> LoraSet | None:
        if not self.lora_rank:
            return None
        with torch.inference_mode(False):
            lora = LoraSet(self.lora_targets, self.lora_rank, seed=self.seed)
        log.info("Elastic DiT training: LoRA rank %d on %d layers, %.1f M parameters", self.lora_rank,
                 len(lora.targets), lora.num_params() / 1e6)
        return lora


def _state_meta(path: str) -> dict:
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        return f.metadata() or {}


class TrainLoop:
    """What runs inside ComfyUI's sampler (TrainSampler): Adam steps, progress, saving, Cancel."""

    def __init__(self, job: TrainJob, teacher):
        self.job, self.teacher = job, teacher
        self.routers, self.meta = job.new_routers()
        self.lora = job.new_lora()  # None: routers only
        self.state: TrainState | None = None  # the student's hook state, set by run_student
        self.trainer: RouterTrainer | None = None
        self.device, self.saved = None, None

    def save(self) -> None:
        if init_from_env()[0] != 0:  # under torchrun rank 0 saves; every rank holds the same weights
            self.saved = self.trainer.step
            return
        self.routers.to("cpu")
        save_routers(self.job.path, self.routers, self.meta)
        if self.lora is not None:
            os.makedirs(os.path.dirname(self.job.lora_path), exist_ok=True)
            save_lora(self.job.lora_path, self.lora, self.job.adapter.family, os.path.basename(self.job.path),
                      {**self.job.provenance, "step": str(self.trainer.step)})
        self.trainer.save(self.job.state_file)
        self.routers.to(self.device)
        self.saved = self.trainer.step

    def progress(self, mx: dict, pbar) -> None:
        steps = self.job.config.steps
        pbar.update_absolute(mx["step"], steps)
        if mx["step"] % self.job.save_every == 0 or mx["step"] == steps:
            self.save()
        if mx["step"] % 10 == 0 or mx["step"] == steps:
            log.info("Elastic DiT training step %d/%d: loss %.5f, mean gate %.3f, open %.2f, mean width %.3f",
                     mx["step"], steps, mx["loss"], mx["mean_gate"], mx["open"], mx["mean_width"])

    def __call__(self, predict, device) -> None:
        job, steps = self.job, self.job.config.steps
        self.device = device
        self.routers.to(device).requires_grad_(True)
        if self.lora is None:
            self.trainer = RouterTrainer(self.routers, job.config)
        else:
            self.lora.to(device).requires_grad_(True)
            self.trainer = JointTrainer(self.routers, job.config, self.lora, job.lora_lr)
        if job.resume:
            self.trainer.resume(job.state_file)
        pbar = comfy.utils.ProgressBar(steps)
        pbar.update_absolute(self.trainer.step, steps)
        try:
            self.trainer.fit(perf_and_aux(self.state, predict, self.teacher, job.batch_size,
                                          lambda: job.seed + self.trainer.step, device),
                             steps=max(steps - self.trainer.step, 0), progress=lambda mx: self.progress(mx, pbar),
                             should_stop=comfy.model_management.processing_interrupted)
        finally:  # Cancel, an error, or the end: what was trained is on disk
            if self.trainer.history and self.saved != self.trainer.step:
                self.save()


def training_flag(value: bool) -> bool:
    """Set ComfyUI's own "a training loop is running" flag (`comfy.model_management.in_training`, which
    its Train LoRA node sets the same way) -> its previous value. With it set, models take their
    differentiable paths: ComfyUI >= 0.3x's Lumina / Z-Image attention, for one, otherwise calls a fused
    comfy-kitchen RMSNorm+RoPE op that has no backward. ComfyUI versions without the flag: a no-op."""
    mm = comfy.model_management
    if not hasattr(mm, "in_training"):
        return value
    was = bool(mm.in_training)
    mm.in_training = value
    return was


def run_student(job: TrainJob, loop: TrainLoop) -> None:
    """The student: a clone of the model with the training hooks, called through ComfyUI's own guider
    (cond processing, CFG, model loading) by a sampler whose sample() is the training loop."""
    model = job.model
    dm = model.get_model_object("diffusion_model")
    ensure_rope_grad()
    with torch.inference_mode(False), torch.enable_grad():
        m = model.clone()
        patch = ElasticPatch(job.adapter, job.refs, RouterCheckpoint(loop.routers, loop.meta, job.path),
                             Policy(ElasticConfig()))
        install(m, patch, width=True)
        loop.state = TrainState(patch, job.config.tau, job.config.grad_checkpoint)
        m.model_options["transformer_options"][RUN_KEY] = loop.state
        _frozen_weights(m, dm)
        if loop.lora is not None:  # after the frozen copy: W' = W + up @ down, then the twins slice or mask W'
            lora_train.install(m, loop.lora)
        lat = job.latent
        guider = comfy.samplers.CFGGuider(m)
        guider.set_conds(job.positive, job.negative)
        guider.set_cfg(job.cfg)
        sigmas = torch.tensor([float(loop.teacher.sigma.max()), 0.0])
        was_training = training_flag(True)
        try:
            guider.sample(torch.zeros_like(lat), lat, TrainSampler(loop), sigmas, seed=job.seed, disable_pbar=True)
        finally:
            training_flag(was_training)
            loop.routers.to("cpu").requires_grad_(False)
            if loop.lora is not None:
                loop.lora.to("cpu").requires_grad_(False)
