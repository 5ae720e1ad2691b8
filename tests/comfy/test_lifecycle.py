"""Lifecycle of the patched MODEL on tiny real models sampled with comfy.sample: what users of other
caches complain about (state leaking across runs, resolution / step-count changes, batch > 1, LoRA,
lowvram, clones, KSamplerAdvanced splits, Heun, interrupts, torch.compile, chained patches).

Routers are forced (tests/comfy/elastic.py `force`) so that every decision is known in advance:
p = 0.505 lies in the borderline band [tau, tau + delta] = [0.5, 0.515] (reuse when a residual is
cached), p = 0.01 is skipped, the default open routers (p = 0.7, full width) run every block.
"""
import pytest
import torch

# Binds `tests` to this repo's package before ComfyUI (which has a `tests` package too) is on sys.path.
import tests.comfy  # noqa: F401,E402
from tests.comfy.records import (REUSE, REUSE_BAND, RUN, assert_batch_is_each_alone, block_refs as _refs,
                                 event_rows as _rows, pack_env)
from tests.comfy.width_ref import zero_fused_single_block_beyond
from tests.router_probe import split_gate  # noqa: E402



@pytest.fixture(scope="module")
def env(comfy):
    return pack_env(comfy)


# -- helpers ---------------------------------------------------------------------------------------

def _per_row_actions(rec):
    """{(block, stream, sample): [action per model call, in order]}"""
    seq = {}
    for e in _rows(rec):
        seq.setdefault((e["block"], e["stream"], e["sample"]), []).append(e["action"])
    return seq


def _band_ckpt(el, pack, model, blocks=None, width=None):
    """Routers with `blocks` (default all) in the reuse band; `width`: {block: width index}."""
    ckpt = el.make_routers(pack, model)
    for i in (range(len(ckpt.routers)) if blocks is None else blocks):
        el.force(ckpt.routers[i], p=REUSE_BAND)
    for i, w in (width or {}).items():
        el.force(ckpt.routers[i], width_idx=w)
    return ckpt


def _holder(model):
    return model.model_options["transformer_options"]["elastic_dit"]


def _counting_patch(counter: dict, name: str, scale: float = 1.0):
    """A `patches_replace["dit"]` patch as another node pack would set it: counts its calls, runs the
    block, and (scale != 1) changes the block's image output so that its effect is visible."""
    def patch(args, extra):
        counter[name] = counter.get(name, 0) + 1
        out = extra["original_block"](args)
        if scale != 1.0:
            out = {**out, "img": out["img"] * scale}
        return out
    return patch


# -- 1. a second run equals the first ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["flux", "qwen"])
def test_second_run_equals_first(env, kind):
    nodes, pack, tiny, el = env
    model = tiny.build(kind)
    n = len(_refs(pack, model))
    ckpt = _band_ckpt(el, pack, model, blocks=[0, n - 1], width={1: 1})
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0)
    first = tiny.sample(patched, kind, steps=5)
    rec1 = el.last_record(patched)
    second = tiny.sample(patched, kind, steps=5)
    rec2 = el.last_record(patched)
    assert rec1 is not rec2, "each run must make its own record"
    assert rec1.counts()["reuse"] > 0, "the band routers should reuse cached residuals"
    assert torch.equal(first, second), "state leaked from the first run into the second"
    assert rec1.events == rec2.events and rec1.steps == rec2.steps
    assert len(rec2) == len(rec1), "the record grew across runs"


# -- 2. resolution and step-count changes between runs ----------------------------------------------

def test_resolution_change_between_runs(env):
    nodes, pack, tiny, el = env
    model = tiny.build("flux")
    patched = el.apply(nodes, model, _band_ckpt(el, pack, model, width={2: 0}), cache_start_percent=0.0)
    a = tiny.sample(patched, "flux", size=16)
    rec_a = el.last_record(patched)
    b = tiny.sample(patched, "flux", size=24)  # 144 image tokens instead of 64: cached residuals do not fit
    rec_b = el.last_record(patched)
    c = tiny.sample(patched, "flux", size=16)
    assert b.shape[-2:] == (24, 24) and torch.isfinite(b).all()
    assert torch.equal(a, c)
    assert rec_b.counts()["reuse"] > 0 and rec_a.events == el.last_record(patched).events
    # the 24x24 run on its own (fresh patched clone) gives the same as after the 16x16 run
    fresh = el.apply(nodes, model, _band_ckpt(el, pack, model, width={2: 0}), cache_start_percent=0.0)
    assert torch.equal(tiny.sample(fresh, "flux", size=24), b)


@pytest.mark.parametrize("kind", ["flux", "qwen"])
def test_step_count_change_between_runs(env, kind):
    nodes, pack, tiny, el = env
    model = tiny.build(kind)
    n = len(_refs(pack, model))
    ckpt = _band_ckpt(el, pack, model)
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0)
    for steps in (4, 6, 3):
        out = tiny.sample(patched, kind, steps=steps)
        fresh = el.apply(nodes, model, ckpt, cache_start_percent=0.0)  # a patched model never sampled before
        assert torch.equal(out, tiny.sample(fresh, kind, steps=steps))
        rec = el.last_record(patched)
        assert rec.num_steps == steps
        assert sorted(rec.steps) == list(range(steps))
        assert sorted(set(rec.events["step"])) == list(range(steps))
        assert len(rec) == steps * n * 2  # euler: one call per step; cfg 3.5: cond + uncond rows
        # sigmas recorded are this run's schedule, not a previous one's
        assert rec.steps[0] == pytest.approx(1.0) and rec.steps[steps - 1] > 0


# -- 3. batch > 1: each row equals that sample alone ------------------------------------------------

def _capture_block_inputs(model, ref, sample_fn):
    """The router inputs ([txt, img], vec) block `ref` sees at its first call in `sample_fn(m)`."""
    got = {}
    m = model.clone()

    def patch(args, extra):
        if not got:
            got.update(tokens=[args["txt"].clone(), args["img"].clone()], vec=args["vec"].clone())
        return extra["original_block"](args)
    m.set_model_patch_replace(patch, "dit", ref.hook, ref.index)
    sample_fn(m)
    return got["tokens"], got["vec"]


@pytest.mark.parametrize("kind,cfg", [("flux", 3.5), ("flux", 1.0), ("qwen", 3.5), ("qwen", 1.0)])
def test_batch_rows_equal_each_sample_alone(env, kind, cfg):
    import comfy.sample
    nodes, pack, tiny, el = env
    steps = 4
    model = tiny.build(kind)
    refs = _refs(pack, model)
    lat = tiny.latent(kind, batch=2)
    noise = comfy.sample.prepare_noise(lat, 7)
    pos, neg = tiny.conds(kind, batch=2, seed=3)

    def run(m, rows=slice(0, 2)):
        return comfy.sample.sample(m, noise[rows], steps, cfg, "euler", "simple", el.conds_rows(pos, rows),
                                   el.conds_rows(neg, rows), lat[rows], seed=0, disable_pbar=True)

    straddled, narrow, band = (1, 2, 3) if kind == "flux" else (1, 2, 0)
    tokens, vec = _capture_block_inputs(model, refs[straddled], run)
    rows_per_sample = 2 if cfg > 1 else 1  # batch holds [uncond rows; cond rows] with cfg > 1
    samples = [r % 2 for r in range(2 * rows_per_sample)]
    ckpt = el.make_routers(pack, model)
    split_gate(ckpt.routers[straddled], tokens, vec, samples)
    el.force(ckpt.routers[narrow], width_idx=1)
    el.force(ckpt.routers[band], p=REUSE_BAND)
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0)

    streams = ("cond", "uncond") if cfg > 1 else ("cond",)
    batch = assert_batch_is_each_alone(el.last_record, patched, run, straddled, streams)
    assert not torch.allclose(batch, run(model), atol=1e-4), "the routers should change the result"


# -- 4. LoRA-style weight patches are what gets sliced (also under lowvram) -------------------------

LORA_CASES = {  # kind, block index, weight keys under diffusion_model that get a diff
    "flux-double": ("flux", 0, ["double_blocks.0.img_mlp.0.weight", "double_blocks.0.img_mlp.0.bias",
                                "double_blocks.0.img_mlp.2.weight", "double_blocks.0.txt_mlp.0.weight"]),
    "flux-single": ("flux", 3, ["single_blocks.1.linear1.weight", "single_blocks.1.linear1.bias",
                                "single_blocks.1.linear2.weight"]),
    "qwen": ("qwen", 1, ["transformer_blocks.1.img_mlp.net.0.proj.weight",
                         "transformer_blocks.1.img_mlp.net.2.weight"]),
}


def _diffs(model, keys, seed=5):
    g = torch.Generator().manual_seed(seed)
    dm = model.get_model_object("diffusion_model")
    return {k: torch.randn(dm.get_parameter(k).shape, generator=g) * 0.05 for k in keys}


def _zero_hidden_beyond(dm, ref, k, kind):
    """The reference for width k/M: hidden channels >= k contribute nothing."""
    blk = dm.get_submodule(ref.path)
    with torch.no_grad():
        if ref.hook == "single_block":
            zero_fused_single_block_beyond(blk, k)
            return
        for mlp in ([blk.img_mlp.net] if kind == "qwen" else [blk.img_mlp, blk.txt_mlp]):
            fc1 = mlp[0].proj if kind == "qwen" else mlp[0]
            fc1.weight[k:] = 0
            fc1.bias[k:] = 0
            mlp[2].weight[:, k:] = 0


def _lora_reference(tiny, pack, kind, block, diffs):
    ref_model = tiny.build(kind)
    dm = ref_model.get_model_object("diffusion_model")
    with torch.no_grad():
        for k, d in diffs.items():
            dm.get_parameter(k).add_(d)  # merged by hand
    ref = _refs(pack, ref_model)[block]
    _zero_hidden_beyond(dm, ref, ref.spec.mlp_hidden // 4, kind)
    return tiny.sample(ref_model, kind)


def _add_diff_patches(model, diffs):
    m = model.clone()
    # ComfyUI's patch format: {key: (diff,)} is a "diff" patch (comfy/lora.py calculate_weight, both versions)
    added = m.add_patches({f"diffusion_model.{k}": (d,) for k, d in diffs.items()}, 1.0)
    assert len(added) == len(diffs)
    return m


def _force_lowvram(monkeypatch):
    """On a CPU load device ComfyUI always loads fully (load_models_gpu: VRAMState.DISABLED -> 0 =
    full load). Force its lowvram path as a low-memory GPU would: every comfy.ops layer keeps its
    weight where it is, gets comfy_cast_weights and applies LoRA per call (LowVramPatch in
    weight_function) inside comfy.ops.cast_bias_weight."""
    import comfy.model_management as mm
    orig = mm.LoadedModel.model_load

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        return orig(self, 1, force_patch_weights=force_patch_weights)
    monkeypatch.setattr(mm.LoadedModel, "model_load", model_load)


@pytest.mark.parametrize("lowvram", [False, True], ids=["full-load", "lowvram"])
@pytest.mark.parametrize("case", list(LORA_CASES))
def test_lora_patched_weights_are_sliced(env, case, lowvram, monkeypatch):
    nodes, pack, tiny, el = env
    kind, block, keys = LORA_CASES[case]
    model = tiny.build(kind)
    diffs = _diffs(model, keys)
    ref = _lora_reference(tiny, pack, kind, block, diffs)
    ckpt = el.make_routers(pack, model)
    el.force(ckpt.routers[block], width_idx=0)  # width 1/4
    # the diff matters: slicing the raw (unpatched) weights gives something else
    plain_ref = _lora_reference(tiny, pack, kind, block, {k: torch.zeros_like(d) for k, d in diffs.items()})
    assert not torch.allclose(plain_ref, ref, atol=1e-4)
    if lowvram:
        _force_lowvram(monkeypatch)
    import comfy.model_management
    try:
        # LoRA loaded before Apply (the usual graph) and after Apply (a LoRA node on Apply's output)
        before = el.apply(nodes, _add_diff_patches(model, diffs), ckpt, cache=False)
        after = _add_diff_patches(el.apply(nodes, model, ckpt, cache=False), diffs)
        for patched in (before, after):
            out = tiny.sample(patched, kind)
            if lowvram:  # the model stays loaded after sampling: check how it was loaded
                assert patched.model.model_lowvram, "the lowvram path was not taken"
                layer = patched.get_model_object("diffusion_model").get_submodule(keys[0].rsplit(".", 1)[0])
                assert layer.comfy_cast_weights and layer.weight_function, "LoRA should be applied per call"
            assert torch.allclose(out, ref, atol=1e-5), (case, (out - ref).abs().max())
    finally:
        comfy.model_management.unload_all_models()  # leave no lowvram-loaded model behind


# -- 5. the MODEL given to Apply is never changed ---------------------------------------------------

def _twin_types(dm, refs):
    return {r.path: type(dm.get_submodule(r.path + (".img_mlp" if r.hook == "double_block" else ".linear1")))
            for r in refs}


@pytest.mark.parametrize("kind", ["flux", "qwen"])
def test_input_model_is_never_changed(env, kind):
    import comfy.model_management
    import comfy.patcher_extension
    nodes, pack, tiny, el = env
    model = tiny.build(kind)
    refs = _refs(pack, model)
    dm = model.get_model_object("diffusion_model")
    types = _twin_types(dm, refs)
    before = tiny.sample(model, kind)
    n = len(refs)
    ckpt = _band_ckpt(el, pack, model, blocks=[0], width={n - 1: 0})
    el.force(ckpt.routers[1], p=0.01)
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0)
    out = tiny.sample(patched, kind)
    assert not torch.allclose(out, before, atol=1e-4)
    assert torch.equal(tiny.sample(model, kind), before)

    comfy.model_management.load_models_gpu([patched])  # load the patched clone: its twins go in
    assert any(type(dm.get_submodule(p)).__name__.startswith("Elastic") for p in
               [r.path + (".img_mlp" if r.hook == "double_block" else ".linear1") for r in refs])
    comfy.model_management.load_models_gpu([model])  # loading the plain model unloads the clone
    assert _twin_types(dm, refs) == types, "twins left in the model after the patched clone was unloaded"
    assert torch.equal(tiny.sample(model, kind), before)
    comfy.model_management.unload_all_models()
    assert torch.equal(tiny.sample(model, kind), before)

    to = model.model_options.get("transformer_options", {})
    assert "elastic_dit" not in to and "elastic_dit_run" not in to
    assert not to.get("patches_replace", {}).get("dit"), "block patches leaked onto the input model"
    assert not model.object_patches
    for wt in (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, comfy.patcher_extension.WrappersMP.APPLY_MODEL):
        assert "elastic_dit" not in model.wrappers.get(wt, {})
    assert "elastic_dit" not in str(model.model_options)


# -- 6. clones of the patched MODEL share one router set ------------------------------------------

def test_clones_share_one_router_set(env):
    nodes, pack, tiny, el = env
    model = tiny.build("flux")
    ckpt = _band_ckpt(el, pack, model, blocks=[0], width={2: 1})
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0)
    c1 = patched.clone()
    c2 = c1.clone()
    holders = [_holder(m) for m in (patched, c1, c2)]
    assert holders[0] is holders[1] is holders[2]
    assert all(h.routers is ckpt.routers for h in holders)
    ptrs = {m: [p.data_ptr() for p in _holder(m).routers.parameters()] for m in (patched, c1, c2)}
    assert ptrs[patched] == ptrs[c1] == ptrs[c2] == [p.data_ptr() for p in ckpt.routers.parameters()]
    ref = tiny.sample(patched, "flux")
    ref_events = el.last_record(patched).events
    for c in (c1, c2):
        assert torch.equal(tiny.sample(c, "flux"), ref)
        assert el.last_record(c).events == ref_events
    # a change to the shared routers is seen by every clone (one set, not copies)
    el.force(ckpt.routers[3], p=0.01)
    changed = tiny.sample(c2, "flux")
    assert not torch.equal(changed, ref) and torch.equal(tiny.sample(patched, "flux"), changed)


# -- 7. KSamplerAdvanced split ---------------------------------------------------------------------

def _advanced_split(nodes, tiny, el, model, steps=4, split=2):
    """Two KSamplerAdvanced nodes as a workflow chains them: steps [0, split) returning leftover noise,
    then [split, steps) without adding noise. -> (latent after each pass, elastic record of each pass)"""
    pos, neg = tiny.conds("flux")
    adv = nodes.KSamplerAdvanced()
    latent, outs, records = {"samples": tiny.latent("flux")}, [], []
    for add_noise, start, end, leftover in (("enable", 0, split, "enable"), ("disable", split, 10000, "disable")):
        latent = adv.sample(model, add_noise, 3, steps, 3.5, "euler", "simple", pos, neg, latent, start, end,
                            leftover)[0]
        outs.append(latent["samples"])
        records.append(_holder(model).last_record if "elastic_dit" in model.model_options["transformer_options"]
                       else None)
    return outs, records


def test_ksampler_advanced_split(env):
    import comfy.samplers
    nodes, pack, tiny, el = env
    model = tiny.build("flux")
    n = len(_refs(pack, model))
    full_sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 4).tolist()

    # exactness across the split: open full-width routers == plain model, after each pass
    patched = el.apply(nodes, model, el.make_routers(pack, model))
    outs, _ = _advanced_split(nodes, tiny, el, patched)
    plain, _ = _advanced_split(nodes, tiny, el, model)
    assert torch.equal(outs[0], plain[0]) and torch.equal(outs[1], plain[1])

    # each pass is its own clean run with its own record (band routers, caching from the start)
    patched = el.apply(nodes, model, _band_ckpt(el, pack, model), cache_start_percent=0.0)
    outs, records = _advanced_split(nodes, tiny, el, patched)
    assert torch.isfinite(outs[1]).all()
    assert records[0] is not records[1]
    for rec, sig in zip(records, (full_sigmas[0:2], full_sigmas[2:4])):
        assert rec.num_steps == 2 and sorted(rec.steps) == [0, 1]  # each pass counts its own 2 steps
        assert [rec.steps[0], rec.steps[1]] == pytest.approx(sig, abs=1e-6)
        assert len(rec) == 2 * n * 2  # 2 steps x n blocks x (cond, uncond): nothing carried over
        acts = _per_row_actions(rec)
        # the second pass starts with an empty cache: its first call runs every block
        assert all(a == [RUN, REUSE] for a in acts.values()), acts


# -- 8. Heun-type samplers evaluate twice per step ----------------------------------------------------

@pytest.mark.parametrize("sampler", ["heun", "dpm_2"])
def test_two_evaluations_per_step_stay_in_range(env, sampler):
    nodes, pack, tiny, el = env
    steps = 3
    model = tiny.build("flux")
    n = len(_refs(pack, model))
    patched = el.apply(nodes, model, el.make_routers(pack, model))
    out = tiny.sample(patched, "flux", sampler=sampler, steps=steps)
    assert torch.equal(out, tiny.sample(model, "flux", sampler=sampler, steps=steps))
    rec = el.last_record(patched)
    assert rec.num_steps == steps
    assert set(rec.events["step"]) <= set(range(steps)) and set(rec.steps) <= set(range(steps))
    assert len(rec) == (2 * steps - 1) * n * 2  # the last step is a plain Euler step (sigma_next = 0)
    # the band routers, too: no crash, steps still in range
    banded = el.apply(nodes, model, _band_ckpt(el, pack, model), cache_start_percent=0.0)
    assert torch.isfinite(tiny.sample(banded, "flux", sampler=sampler, steps=steps)).all()
    assert set(el.last_record(banded).events["step"]) <= set(range(steps))


# -- 9. an interrupted run leaves nothing behind ---------------------------------------------------

class _Stop(Exception):
    pass


def test_interrupted_run_then_fresh_run_is_clean(env):
    import comfy.model_management
    nodes, pack, tiny, el = env
    model = tiny.build("flux")
    ckpt = _band_ckpt(el, pack, model, width={2: 0})
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0, max_reuse=2)
    clean = el.apply(nodes, model, _band_ckpt(el, pack, model, width={2: 0}), cache_start_percent=0.0, max_reuse=2)
    expected = tiny.sample(clean, "flux", steps=5)
    expected_events = el.last_record(clean).events
    home = {p.device for p in ckpt.routers.parameters()}

    # (a) the way the server cancels: its progress hook raises InterruptProcessingException after a step
    def cancel(step, x0, x, total):
        if step == 1:
            raise comfy.model_management.InterruptProcessingException()
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        tiny.sample(patched, "flux", steps=5, callback=cancel)
    partial = el.last_record(patched)
    assert sorted(partial.steps) == [0, 1], "the interrupted run's record should end where it stopped"

    # (b) an exception inside a block, mid-model, while a block runs at 1/4 width
    ref = _refs(pack, model)[2]
    calls = {}
    boom = model.clone()

    def failing(args, extra):
        calls["n"] = calls.get("n", 0) + 1
        if calls["n"] == 2:  # the block runs at steps 0 and 3 (band routers, K = 2): fail at step 3
            raise _Stop("failure inside a block")
        return extra["original_block"](args)
    boom.set_model_patch_replace(failing, "dit", ref.hook, ref.index)
    boom_patched = el.apply(nodes, boom, ckpt, cache_start_percent=0.0, max_reuse=2)
    with pytest.raises(_Stop):
        tiny.sample(boom_patched, "flux", steps=5)
    assert all(slot.width is None for slot in _holder(boom_patched).slots), "a width was left set"

    for m in (patched, boom_patched):
        assert "elastic_dit_run" not in m.model_options["transformer_options"]
    out = tiny.sample(patched, "flux", steps=5)
    assert torch.equal(out, expected), "state of the interrupted run leaked into the next one"
    assert el.last_record(patched).events == expected_events
    # On this CPU-only machine the routers never leave their device, so "back on their original
    # device" can only be checked as "unchanged"; the GPU->CPU move is not exercised here.
    assert {p.device for p in ckpt.routers.parameters()} == home


# -- 10. torch.compile is refused clearly ----------------------------------------------------------

def _compile_wrapper(calls):
    def wrapper(executor, *args, **kwargs):  # stands in for TorchCompileModel's wrapper; compiles nothing
        calls.append(1)
        return executor(*args, **kwargs)
    return wrapper


def test_torch_compile_wrapper_refused_at_apply(env):
    import comfy.patcher_extension
    nodes, pack, tiny, el = env
    model = tiny.build("flux")
    compiled = model.clone()
    # as comfy_api.torch_helpers.set_torch_compile_wrapper does (ModelPatcher.add_wrapper_with_key)
    compiled.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "torch.compile",
                                  _compile_wrapper([]))
    with pytest.raises(RuntimeError, match="torch.compile"):
        el.apply(nodes, compiled, el.make_routers(pack, model))


def test_torch_compile_model_node_refused_at_apply(env):
    """The real helper TorchCompileModel calls (torch.compile is lazy: nothing is compiled here)."""
    nodes, pack, tiny, el = env
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    model = tiny.build("flux")
    compiled = model.clone()
    set_torch_compile_wrapper(compiled, backend="inductor")
    with pytest.raises(RuntimeError, match="torch.compile"):
        el.apply(nodes, compiled, el.make_routers(pack, model))


def test_torch_compile_wrapper_added_after_apply_refused_at_sampling(env):
    import comfy.patcher_extension
    nodes, pack, tiny, el = env
    model = tiny.build("flux")
    patched = el.apply(nodes, model, el.make_routers(pack, model))
    compiled = patched.clone()
    calls = []
    compiled.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "torch.compile",
                                  _compile_wrapper(calls))
    with pytest.raises(RuntimeError, match="torch.compile"):
        tiny.sample(compiled, "flux")
    assert calls == [], "the model ran before the error"
    assert _holder(compiled).last_record is None or len(_holder(compiled).last_record) == 0


# -- 11. chaining with other block patches, and Apply on its own output ----------------------------

def test_earlier_block_patch_still_runs(env):
    nodes, pack, tiny, el = env
    steps = 4
    model = tiny.build("flux")
    refs = _refs(pack, model)
    counts = {}
    chained = model.clone()
    for i in (0, 2, 3):  # block 2 will be skipped by its router, block 3 reuses
        chained.set_model_patch_replace(_counting_patch(counts, i, scale=1.01), "dit", refs[i].hook, refs[i].index)

    # open routers, no cache: the earlier patches run at every call, and their effect is kept
    open_ = el.apply(nodes, chained, el.make_routers(pack, model), cache=False)
    out = tiny.sample(open_, "flux", steps=steps)
    assert counts == {0: steps, 2: steps, 3: steps}
    counts.clear()
    assert torch.equal(out, tiny.sample(chained, "flux", steps=steps))
    counts.clear()

    # a skipped block does not run its earlier patch; a reusing block runs it only when it runs
    ckpt = el.make_routers(pack, model)
    el.force(ckpt.routers[2], p=0.01)
    el.force(ckpt.routers[3], p=REUSE_BAND)
    gated = el.apply(nodes, chained, ckpt, cache_start_percent=0.0, max_reuse=2)
    tiny.sample(gated, "flux", steps=steps)
    acts = _per_row_actions(el.last_record(gated))
    assert counts.get(2, 0) == 0 and counts[0] == steps
    runs_3 = sum(a == RUN for a in acts[(3, "cond", 0)])
    assert 0 < runs_3 < steps and counts[3] == runs_3


def test_apply_twice_does_not_stack(env):
    nodes, pack, tiny, el = env
    steps = 4
    model = tiny.build("flux")
    refs = _refs(pack, model)
    n = len(refs)
    counts = {}
    chained = model.clone()
    chained.set_model_patch_replace(_counting_patch(counts, "b1"), "dit", refs[1].hook, refs[1].index)
    ckpt = _band_ckpt(el, pack, model, blocks=[3], width={2: 0})
    once = el.apply(nodes, chained, ckpt, cache_start_percent=0.0)
    out_once = tiny.sample(once, "flux", steps=steps)
    rec_once = el.last_record(once)
    counts.clear()

    twice = el.apply(nodes, once, ckpt, cache_start_percent=0.0)
    out_twice = tiny.sample(twice, "flux", steps=steps)
    rec = el.last_record(twice)
    assert counts["b1"] == steps, "the earlier patch ran more than once per call"
    assert len(rec) == steps * n * 2
    keys = [(e["step"], e["block"], e["stream"], e["sample"]) for e in _rows(rec)]
    assert len(keys) == len(set(keys)), "a block was routed twice in one call"
    assert torch.equal(out_twice, out_once) and rec.events == rec_once.events


def test_a_second_apply_replaces_the_first(env):
    """Pinned for the README's design choices: Apply on an already-patched MODEL replaces the first Apply
    (its routers and settings); it does not stack on it."""
    nodes, pack, tiny, el = env
    model = tiny.build("flux")
    first = el.apply(nodes, model, el.make_routers(pack, model, seed=1), tau=1.0, cache=False)  # skips every block
    ckpt = el.make_routers(pack, model, seed=2)
    second = el.apply(nodes, first, ckpt, tau=0.0, cache=False)  # runs every block
    out = tiny.sample(second, "flux", steps=3)
    rec = el.last_record(second)
    assert rec.config["tau"] == 0.0 and rec.counts()["skip"] == 0
    assert torch.equal(out, tiny.sample(el.apply(nodes, model, ckpt, tau=0.0, cache=False), "flux", steps=3))
    assert not torch.equal(out, tiny.sample(first, "flux", steps=3))


# -- 12. the cache is used, capped at K, and can live on the CPU ------------------------------------

@pytest.mark.parametrize("kind", ["flux", "qwen"])
def test_cache_reuse_pattern_capped_at_k(env, kind):
    nodes, pack, tiny, el = env
    steps = 7
    model = tiny.build(kind)
    n = len(_refs(pack, model))
    ckpt = _band_ckpt(el, pack, model)
    patched = el.apply(nodes, model, ckpt, cache_start_percent=0.0, max_reuse=2)
    out = tiny.sample(patched, kind, steps=steps)
    rec = el.last_record(patched)
    acts = _per_row_actions(rec)
    assert len(acts) == n * 2  # every block, cond and uncond
    for key, seq in acts.items():
        assert seq == [RUN, REUSE, REUSE, RUN, REUSE, REUSE, RUN], (key, seq)
    reuse_counts = [e["reuse"] for e in _rows(rec) if e["action"] == REUSE]
    assert set(reuse_counts) == {1, 2}
    assert rec.cache_bytes_peak > 0

    off = el.apply(nodes, model, ckpt, cache=False, cache_start_percent=0.0, max_reuse=2)
    out_off = tiny.sample(off, kind, steps=steps)
    assert el.last_record(off).counts()["reuse"] == 0
    assert el.last_record(off).cache_bytes_peak == 0
    assert not torch.allclose(out, out_off, atol=1e-5), "reusing residuals should change the result"

    on_cpu = el.apply(nodes, model, ckpt, cache_start_percent=0.0, max_reuse=2, cache_device="cpu")
    assert torch.equal(tiny.sample(on_cpu, kind, steps=steps), out)
    assert el.last_record(on_cpu).events == rec.events
