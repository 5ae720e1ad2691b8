"""Router training inside ComfyUI: the differentiable elastic block (eqs. 7 and 13) behind the same
per-block hook that sampling uses, and the training loop, run as a ComfyUI `Sampler` so that ComfyUI
itself loads the model, prepares the conditionings and applies CFG exactly as it does when sampling.

Teacher: the same model run dense. Its states x_t, sigmas and predictions come from dense sampling
trajectories (random noise, the user's conditionings), so training sees the inputs sampling will see;
each training step draws random (trajectory, step) pairs from them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

import comfy.sample
import comfy.samplers

from ..elastic_core.distributed import share
from ..elastic_core.train import Aux, distill_loss, gate, route, width_mask


class TrainState:
    """Set as transformer_options[RUN_KEY] on the training clone; the block hook calls `block`.

    Every block runs (masked, never sliced) and its output is mixed with its input by the
    straight-through gate, x_out = x + g (B(x; m) - x), so gradients reach every router.
    """

    def __init__(self, patch, tau: float, grad_checkpoint: bool):
        self.patch, self.tau, self.grad_checkpoint = patch, tau, grad_checkpoint
        self.recomputes = grad_checkpoint  # the hook then hands `block` a snapshot of ComfyUI's original
        self.aux = Aux([], [], [])

    def reset(self) -> None:
        self.aux = Aux([], [], [])

    def block(self, i: int, args: dict, original) -> dict:
        adapter, ref, slot = self.patch.adapter, self.patch.refs[i], self.patch.slots[i]
        x = adapter.streams(ref, args)  # {"img": [B, L, D], ...}
        names = list(x)
        batch = x[names[0]].shape[0]
        out = route(self.patch.routers[i], adapter.router_tokens(ref, args), adapter.cond(ref, args),
                    self.grad_checkpoint)  # with checkpointing, the router too is recomputed in the backward
        g, hard = gate(out, self.tau)  # [B]
        m, r = width_mask(out, self.patch.routers.config.widths, ref.spec.mlp_hidden)  # [B, M], [B]

        def run(mask: Tensor, *xs: Tensor) -> tuple[Tensor, ...]:
            ins = {k: (v.clone() if adapter.inplace else v) for k, v in zip(names, xs)}
            slot.mask = mask
            try:
                with torch.autograd.graph.saved_tensors_hooks(*_copy_on_save(ins.values())):
                    y = adapter.call(ref, args, original, ins, None, batch)
            finally:
                slot.mask = None
            return tuple(y[k] for k in names)

        xs = tuple(x[k] for k in names)
        # reentrant checkpointing: the forward runs without a graph, the backward re-runs the block with
        # one; the mask goes in as an argument so its gradient flows
        recompute = self.grad_checkpoint and getattr(original, "elastic_dit_frozen", False)
        ys = checkpoint(run, m, *xs, use_reentrant=True) if recompute else run(m, *xs)
        self.aux.p.append(out.p)
        self.aux.r.append(r)
        self.aux.g_hard.append(hard)
        return {k: v + g.to(v.dtype).view(-1, *([1] * (v.dim() - 1))) * (y - v) for (k, v), y in zip(x.items(), ys)}


def _copy_on_save(streams):
    """Saved-tensor hooks for blocks that add into their input streams in place (Flux: `img += ...`
    after a norm saved `img`): what autograd saves from a stream's storage is saved as a copy."""
    ptrs = {t.untyped_storage().data_ptr() for t in streams}

    def pack(t: Tensor):
        return t.clone() if t.untyped_storage().data_ptr() in ptrs else t
    return pack, lambda t: t


@dataclass
class Teacher:
    """Dense sampling states: x [N, ...] at sigma [N], with the dense prediction (denoised) [N, ...]."""
    x: Tensor
    sigma: Tensor
    denoised: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def draw(self, n: int, generator: torch.Generator, device) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.randint(len(self), (n,), generator=generator)
        return tuple(t.index_select(0, idx).to(device) for t in (self.x, self.sigma, self.denoised))


def dense_trajectories(model, positive, negative, latent: Tensor, cfg: float, steps: int, count: int,
                       seed: int, sampler: str = "euler", scheduler: str = "simple") -> Teacher:
    """Sample `count` images dense with ComfyUI's own sampler; keep every step's input and prediction."""
    latent = comfy.sample.fix_empty_latent_channels(model, latent[:1]).repeat(count, *([1] * (latent.dim() - 1)))
    noise = comfy.sample.prepare_noise(latent, seed)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()
    xs, ds, ss = [], [], []

    def keep(i, denoised, x, total):
        xs.append(x.detach().float().cpu())
        ds.append(denoised.detach().float().cpu())
        ss.append(sigmas[i].expand(x.shape[0]))

    comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent, seed=seed,
                        callback=keep, disable_pbar=True)
    with torch.inference_mode(False):  # plain tensors: these feed a graph that autograd records
        return Teacher(torch.cat(xs).clone(), torch.cat(ss).float().clone(), torch.cat(ds).clone())


class TrainSampler(comfy.samplers.Sampler):
    """A 'sampler' whose sample() trains: `loop(predict)` gets predict(x, sigma) -> denoised, the
    guider's CFG prediction through the model ComfyUI has loaded and prepared."""

    def __init__(self, loop: Callable[[Callable[[Tensor, Tensor], Tensor], torch.device], None]):
        self.loop = loop

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        def predict(x: Tensor, sigma: Tensor) -> Tensor:
            return model_wrap(x, sigma, **extra_args)
        self.loop(predict, noise.device)
        return latent_image


def perf_and_aux(state: TrainState, predict, teacher: Teacher, batch: int, seed: Callable[[], int], device):
    """L_perf (distance to the dense prediction) and what the routers said, for one random batch.
    The batch is drawn with seed() (the run's seed plus the step), so a resumed run draws what an
    uninterrupted one would have."""
    def fn() -> tuple[Tensor, Aux]:
        # under torchrun every rank draws the same global batch and computes its share of it
        x, sigma, target = (t[share(batch)] for t in teacher.draw(batch, torch.Generator().manual_seed(seed()), device))
        state.reset()
        pred = predict(x.to(torch.float32), sigma)
        return distill_loss(pred.float(), target.float()), state.aux
    return fn
