"""Patch a CLONED ModelPatcher with elastic blocks, using only ComfyUI's sanctioned hooks:

- per block, `patches_replace["dit"][(name, i)]`, chained onto whatever patch was there before;
- per block, object patches that swap the MLP for a width-aware twin of itself (`twins.py`);
- an OUTER_SAMPLE wrapper that creates the per-run state (`RunState`) for each sampling run and frees
  it in `finally`, so a second run, a new resolution or step count, an interrupted run or a
  KSamplerAdvanced split each start clean.

The `ElasticPatch` holder deep-copies to itself: cloning the MODEL downstream shares the routers.
"""
from __future__ import annotations

import logging
import types

import comfy.model_patcher
import comfy.patcher_extension

from ..elastic_core.checkpoint import RouterCheckpoint
from ..elastic_core.elastic_mlp import MLP_ACTIVATIONS
from ..elastic_core.policy import Policy
from ..elastic_core.stats import RunRecord
from .adapters import FamilyAdapter, adapter_for
from .run_state import RunState
from .twins import WidthSlot

HOLDER_KEY = "elastic_dit"  # model_options["transformer_options"][HOLDER_KEY]: the ElasticPatch
ROUTERS_KEY = "elastic_dit_routers"  # additional_models key: the routers, as a model ComfyUI loads and frees
RUN_KEY = "elastic_dit_run"  # transformer_options[RUN_KEY]: the RunState of the sampling run under way
WRAPPER_KEY = "elastic_dit"
COMPILE_KEY = "torch.compile"  # the wrapper key ComfyUI's TorchCompileModel uses
log = logging.getLogger("elastic_dit")


class ElasticPatch:
    """What one Apply node put on a model: adapter, routers, policy. Shared by all clones (and so is
    `last_record`: of two clones of one patched MODEL, the record is the last run's of either).
    `mlp_activation`: the MLP activation the routed blocks run (an MLP_ACTIVATIONS name), None: the model's."""

    def __init__(self, adapter: FamilyAdapter, refs, ckpt: RouterCheckpoint, policy: Policy,
                 node_id: str | None = None, mlp_activation: str | None = None):
        self.adapter, self.refs, self.ckpt, self.policy = adapter, refs, ckpt, policy
        self.routers = ckpt.routers
        self.specs = [r.spec for r in refs]
        self.mlp_activation = mlp_activation
        act = None if mlp_activation is None else MLP_ACTIVATIONS[mlp_activation]
        self.slots = [WidthSlot(act) for _ in refs]
        self.node_id = node_id
        self.last_record: RunRecord | None = None

    def __deepcopy__(self, memo):
        return self  # clones share one holder: router weights exist once


def _compiled(model) -> bool:
    return bool(model.get_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL, COMPILE_KEY))


def compile_error() -> RuntimeError:
    return RuntimeError(
        "Elastic DiT cannot run inside a whole-model torch.compile (TorchCompileModel): the compiled "
        "graph would freeze per-step skip decisions. Remove TorchCompileModel from this model's path, "
        "or put Elastic DiT on a model that is not compiled.")


def _make_hook(patch: ElasticPatch, i: int, prev):
    def hook(args: dict, extra: dict) -> dict:
        state: RunState | None = args.get("transformer_options", {}).get(RUN_KEY)
        ours = state is not None and state.patch is patch
        original = extra["original_block"]
        if ours and state.recomputes:  # called again later (training's backward): bind it to this block now
            original = snapshot(original)
        if prev is not None:  # a patch that was here before ours runs whenever the block runs
            inner = original
            original = lambda a: prev(a, {**extra, "original_block": inner})  # noqa: E731
            original.elastic_dit_frozen = getattr(inner, "elastic_dit_frozen", False)
        if not ours:  # not sampling under our wrapper: plain block
            return original(args)
        return state.block(i, args, original)
    hook.elastic_dit_prev = prev  # lets a later Apply node replace this patch instead of stacking on it
    return hook


def snapshot(fn):
    """`fn` with its closure frozen at its current values.

    ComfyUI's `original_block` is a function defined inside the model's block loop; it reads the
    loop variable `block` when called, so called after the loop (as a backward-pass recompute does)
    it would run the LAST block. The copy keeps the cells' values of this call. Not a plain function
    (another node's wrapper): returned as it is, and the caller must not recompute through it.
    """
    if not isinstance(fn, types.FunctionType) or not fn.__closure__:
        return fn
    cells = tuple(types.CellType(c.cell_contents) for c in fn.__closure__)
    frozen = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, cells)
    frozen.__kwdefaults__ = fn.__kwdefaults__
    frozen.elastic_dit_frozen = True
    return frozen


def _outer_sample(executor, *args, **kwargs):
    guider = executor.class_obj
    orig_options = guider.model_options
    patch: ElasticPatch = orig_options["transformer_options"][HOLDER_KEY]
    if _compiled(guider.model_patcher):
        raise compile_error()
    guider.model_options = comfy.model_patcher.create_model_options_clone(orig_options)
    state = RunState(patch, sigmas=args[3], model_sampling=guider.model_patcher.get_model_object("model_sampling"))
    guider.model_options["transformer_options"][RUN_KEY] = state
    completed = False
    try:
        out = executor(*args, **kwargs)
        completed = True
        return out
    finally:
        guider.model_options = orig_options
        record = state.finish(completed)
        patch.last_record = record
        log.info("Elastic DiT: %s", state.log_line(record))


def apply_elastic(model, ckpt: RouterCheckpoint, policy: Policy, node_id: str | None = None,
                  authors_activation: bool = True):
    """A clone of `model` (a ModelPatcher) running elastic blocks. `model` itself is not changed.
    authors_activation: run the routed blocks' MLPs with the activation the router file asks for (the
    released routers: the authors' x * sigmoid(1.702 x)); False: the model's own."""
    dm = model.get_model_object("diffusion_model")
    adapter = adapter_for(dm)
    refs = adapter.blocks(dm)
    check_compatible(adapter, dm, refs, ckpt)
    if _compiled(model):
        raise compile_error()
    act = ckpt.meta.mlp_activation if authors_activation else None
    if act is not None and adapter.activation_patches(dm, refs[0], WidthSlot(), dm.get_submodule) is None:
        raise ValueError(f"router file {ckpt.path} asks for the MLP activation {act!r}, which Elastic DiT can run "
                         f"only in Qwen-Image models, not in this {adapter.family} model; turn authors_activation "
                         "off to run the model's own")
    m = model.clone()
    install(m, ElasticPatch(adapter, refs, ckpt, policy, node_id, act), width=policy.config.width)
    # The routers (3.45 GB for the release, bf16) are a model of their own to ComfyUI's memory management:
    # loaded to the model's device with it, counted in its decisions, freed like any model when room is needed.
    m.set_additional_models(ROUTERS_KEY, [comfy.model_patcher.ModelPatcher(
        ckpt.routers, load_device=model.load_device, offload_device=model.offload_device)])
    m.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _outer_sample)
    return m


def install(m, patch: ElasticPatch, width: bool) -> None:
    """Put the block hooks (and, with `width` or another MLP activation, the MLP twins) of `patch` on the
    clone `m`."""
    dm = m.get_model_object("diffusion_model")
    m.model_options["transformer_options"][HOLDER_KEY] = patch
    dit = m.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    get = lambda p: m.get_model_object(f"diffusion_model.{p}")  # noqa: E731
    for i, ref in enumerate(patch.refs):
        prev = dit.get((ref.hook, ref.index))
        prev = getattr(prev, "elastic_dit_prev", prev)
        m.set_model_patch_replace(_make_hook(patch, i, prev), "dit", ref.hook, ref.index)
        twins = patch.adapter.width_patches(dm, ref, patch.slots[i], get) if width or patch.mlp_activation else {}
        if patch.mlp_activation is not None:
            twins.update(patch.adapter.activation_patches(dm, ref, patch.slots[i], get))
        for path, twin in twins.items():
            m.add_object_patch(f"diffusion_model.{path}", twin)
    patch.adapter.extra_hooks(m, patch)


def check_compatible(adapter: FamilyAdapter, dm, refs, ckpt: RouterCheckpoint) -> None:
    """Routers fit this model, or a ValueError a user understands, before any sampling."""
    meta, src = ckpt.meta, ckpt.path
    if meta.family != adapter.family:
        raise ValueError(f"router file {src} was made for the {meta.family!r} family, but this model is "
                         f"{adapter.family!r}; load routers made for this model")
    if len(ckpt.routers) != len(refs):
        raise ValueError(f"router file {src} has {len(ckpt.routers)} routers, but this {adapter.family} model has "
                         f"{len(refs)} blocks; the file was made for a model of another depth")
    want = adapter.router_config(dm)
    if (meta.router.dim, meta.router.cond) != (want.dim, want.cond):
        raise ValueError(f"router file {src} reads width {meta.router.dim} (conditioning {meta.router.cond}), "
                         f"but this model's blocks have width {want.dim} (conditioning {want.cond})")
    names = [r.spec.name for r in refs]
    if list(meta.block_names) != names:
        bad = next(i for i, (a, b) in enumerate(zip(meta.block_names, names)) if a != b)
        raise ValueError(f"router file {src} names block {bad} {meta.block_names[bad]!r}, this model {names[bad]!r}")

