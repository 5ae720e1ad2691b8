"""Both router layouts on every family's tiny real ComfyUI model: the released layout (router file
format 1) and the compact one (format 2, a low-rank modulation). A compact router and its released
twin (modulation weight up @ down, the unused gate rows zero) compute the same gate and width
logits, so through Apply, the sampler, the run record, the Stats node's heatmap and the presets both
layouts must make the same decisions and the same samples. Train Elastic Router makes compact files
by default, released ones on request, and refuses a resume across layouts before any sampling."""
import os

import pytest
import torch

import tests.comfy  # noqa: F401  (bind our `tests` package before ComfyUI's)

FAMILIES = ["flux", "chroma", "qwen", "hunyuan3d", "hunyuan3d21"]
FAMILY_NAME = {"qwen": "qwen_image", "hunyuan3d21": "hunyuan3d_2_1"}


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    import folder_paths

    from tests.comfy import elastic, tiny
    routers_dir = tmp_path_factory.mktemp("elastic_routers")
    folder_paths.add_model_folder_path("elastic_routers", str(routers_dir), is_default=True)
    folder_paths.add_model_folder_path("loras", str(tmp_path_factory.mktemp("loras")), is_default=True)
    return comfy[0], comfy[1], tiny, elastic, routers_dir


def _model(tiny, kind):
    return tiny.build_3d(kind) if kind.startswith("hunyuan3d") else tiny.build(kind)


def _sample(tiny, kind, m):
    return tiny.sample_3d(m, steps=6) if kind.startswith("hunyuan3d") else tiny.sample(m, kind, steps=6)


@torch.no_grad()
def _twins(pack, el, model):
    """(compact, released) RouterCheckpoints computing the same logits; gates and widths vary by block."""
    ec = pack.elastic_core
    compact = el.make_routers(pack, model, seed=1, layout="compact")
    g = torch.Generator().manual_seed(2)
    for i, r in enumerate(compact.routers):
        r.out[2].weight.normal_(0.0, 1.0, generator=g)
        r.out[2].bias.fill_(2.0 * (-1) ** i)  # odd blocks lean to skip, even ones to run
        r.width_head.weight.normal_(0.0, 3.0, generator=g)
    c = compact.meta.router
    released = ec.router.RouterSet(c.with_layout("released"), compact.routers.block_names)
    for a, b in zip(compact.routers, released):
        state = {k: v for k, v in a.state_dict().items() if not k.startswith("mod_")}
        state["img_mod.1.weight"] = torch.cat([a.mod_up.weight @ a.mod_down.weight, torch.zeros(c.dim, c.cond)])
        state["img_mod.1.bias"] = torch.cat([a.mod_up.bias, torch.zeros(c.dim)])
        b.load_state_dict(state)
    meta = ec.checkpoint.RouterMeta.for_routers(released, compact.meta.family)
    return compact, ec.checkpoint.RouterCheckpoint(released, meta, compact.path)  # one name: the heatmap prints it


@pytest.mark.parametrize("kind", FAMILIES)
def test_both_layouts_route_alike_on_every_family(env, kind):
    nodes, pack, tiny, el, _ = env
    model = _model(tiny, kind)
    stats = nodes.NODE_CLASS_MAPPINGS["ElasticDiTStats"]()
    runs = []
    for ckpt in _twins(pack, el, model):
        patched = el.apply(nodes, model, ckpt, cache_start_percent=0.3, delta=0.2)
        out = _sample(tiny, kind, patched)
        rec = el.last_record(patched)
        picture, _ = stats.stats(patched, {"samples": out}, "cond", 0)  # the Stats node works on both
        assert picture.dim() == 4 and picture.shape[-1] == 3
        pl = pack.elastic_core.heatmap.payload(rec)  # the cells alone (the picture also prints the wall time)
        runs.append((out, rec, torch.from_numpy(pack.elastic_core.heatmap.render(pl)).float()))
    (out_c, rec_c, heat_c), (out_r, rec_r, heat_r) = runs
    assert rec_c.events["action"] == rec_r.events["action"] and rec_c.events["width"] == rec_r.events["width"]
    acts = set(rec_c.events["action"])
    assert len(acts) >= 2, f"{kind}: the routers made one kind of decision only ({acts}); the check would be weak"
    assert torch.allclose(torch.tensor(rec_c.events["p"]), torch.tensor(rec_r.events["p"]), atol=1e-5)
    assert torch.allclose(out_c, out_r, atol=1e-5), (out_c - out_r).abs().max()
    assert (heat_c - heat_r).abs().max() <= 1.0  # same cells (a p on a colour step may round one level apart)


@pytest.mark.parametrize("layout", ["compact", "released"])
def test_file_round_trip_loader_and_router_file_preset(env, layout):
    """Saved in its format, listed and loaded by the loader node, its defaults used by the preset."""
    nodes, pack, tiny, el, routers_dir = env
    ec = pack.elastic_core
    model = tiny.build("flux")
    ckpt = el.make_routers(pack, model, layout=layout)
    defaults = {"tau": 0.3, "delta": 0.1, "max_reuse": 2, "cache_start": 0.5, "cache_end": 1.0}
    meta = ec.checkpoint.RouterMeta.for_routers(ckpt.routers, "flux", defaults=defaults)
    name = f"layout {layout}.safetensors"
    ec.checkpoint.save_routers(os.path.join(routers_dir, name), ckpt.routers, meta)
    version = ec.checkpoint.read_header(os.path.join(routers_dir, name)).metadata["format_version"]
    assert version == {"compact": "2", "released": "1"}[layout]
    loaded = nodes.NODE_CLASS_MAPPINGS["ElasticDiTRouterLoader"]().load(name)[0]
    assert loaded.meta.router.layout == layout
    patched = el.apply(nodes, model, loaded, preset="router file defaults")
    tiny.sample(patched, "flux", steps=8)
    c = el.last_record(patched).config
    assert (c["tau"], c["delta"], c["max_reuse"], c["cache_start"]) == (0.3, 0.1, 2, 0.5)


def test_compact_file_for_another_width_or_family_refused_at_apply(env):
    nodes, pack, tiny, el, _ = env
    flux = tiny.build("flux")
    compact = el.make_routers(pack, flux, layout="compact")
    with pytest.raises(ValueError, match="made for the 'flux' family.*'qwen_image'"):
        el.apply(nodes, tiny.build("qwen"), compact)
    cfg = tiny.flux_config()
    cfg.update(hidden_size=96, num_heads=3)
    wide = tiny.build_from_config("flux", cfg)
    with pytest.raises(ValueError, match="reads width 64.*width 96"):
        el.apply(nodes, wide, compact)


def _train(nodes, tiny, model, **kw):
    ctx = model.get_model_object("diffusion_model").txt_in.in_features
    with torch.inference_mode():
        pos, _ = tiny.conds("flux", 1, 0, 8, ctx)
        lat = {"samples": tiny.latent("flux", 1, 16)}
        args = dict(steps=3, learning_rate=0.05, rho_g=0.3, rho_w=0.5, filename="layouts", seed=0,
                    sampling_steps=3, teacher_runs=1)
        return nodes.NODE_CLASS_MAPPINGS["ElasticDiTTrainRouter"]().train(model, pos, lat, **{**args, **kw})[0]


def test_train_node_layouts_and_refusals_before_sampling(env):
    nodes, pack, tiny, el, routers_dir = env
    ec = pack.elastic_core
    inputs = nodes.NODE_CLASS_MAPPINGS["ElasticDiTTrainRouter"].INPUT_TYPES()["optional"]
    assert list(inputs)[-1] == "router_layout" and inputs["router_layout"][1]["default"] == "compact"
    with torch.inference_mode():
        model = tiny.build("flux", seed=3, std=0.08)
    default = _train(nodes, tiny, model, filename="compact run")
    released = _train(nodes, tiny, model, filename="released run", router_layout="released")
    assert default.meta.router.layout == "compact" and released.meta.router.layout == "released"
    assert ec.checkpoint.read_header(default.path).metadata["format_version"] == "2"
    assert ec.checkpoint.read_header(released.path).metadata["format_version"] == "1"
    n_c, n_r = (sum(p.numel() for p in ck.routers[0].parameters()) for ck in (default, released))
    assert n_c < n_r  # at D = 64 and rank 32 the gap is small; at D = 3072 it is 0.70 M against 28.7 M
    resumed = _train(nodes, tiny, model, filename="compact run", steps=5, resume=True)
    assert resumed.path == default.path and resumed.meta.router.layout == "compact"
    calls = []
    import comfy.utils
    comfy.utils.set_progress_bar_global_hook(lambda *a, **k: calls.append(a))
    try:
        with pytest.raises(ValueError, match="holds compact-layout routers, but router_layout is 'released'"):
            _train(nodes, tiny, model, filename="compact run", steps=6, resume=True, router_layout="released")
        with pytest.raises(ValueError, match="holds released-layout routers, but router_layout is 'compact'"):
            _train(nodes, tiny, model, filename="released run", steps=6, resume=True)
        cfg = tiny.flux_config()
        cfg.update(hidden_size=96, num_heads=3)
        with torch.inference_mode():
            wide = tiny.build_from_config("flux", cfg)
        with pytest.raises(ValueError, match="reads width 64.*width 96"):
            _train(nodes, tiny, wide, filename="compact run", steps=6, resume=True)
        with pytest.raises(ValueError, match="router_layout 'tiny'"):
            _train(nodes, tiny, model, filename="other", router_layout="tiny")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert calls == []  # nothing sampled before the errors


def test_trains_on_fp8_weights_with_a_lora(env):
    """The memory estimate's setting: weights stored in fp8 (computed in a wider type, as ComfyUI runs an
    fp8 Flux), compact routers recomputed under checkpointing, a LoRA."""
    nodes, pack, tiny, el, routers_dir = env
    with torch.inference_mode():
        model = tiny.build("flux", seed=3, std=0.08, dtype=torch.float8_e4m3fn, manual_cast=torch.float32)
    w = model.get_model_object("diffusion_model").double_blocks[0].img_mlp[0].weight
    assert w.dtype == torch.float8_e4m3fn
    before = w.clone()
    ckpt = _train(nodes, tiny, model, filename="fp8 run", steps=4, lora_rank=2, gradient_checkpointing=True)
    assert ckpt.meta.router.layout == "compact" and ckpt.meta.provenance["lora_rank"] == "2"
    with torch.no_grad():
        trained = list(ckpt.routers.parameters())
        start = list(el.make_routers(pack, model, layout="compact").routers.parameters())
        assert all(torch.isfinite(p).all() for p in trained)
        assert any((p - q).abs().max() > 0 for p, q in zip(trained, start))
    assert ckpt.meta.provenance["lora"] == "fp8 run.safetensors"
    assert torch.equal(w.float(), before.float()) and w.dtype == torch.float8_e4m3fn  # the user's model untouched
