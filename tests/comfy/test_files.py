"""Router files through the real loader node: our format, the authors' released layout, bad files."""
import os

import pytest
import torch
from safetensors.torch import save_file

from tests.core.test_router import ReleasedRouteGate


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    import folder_paths

    from tests.comfy import elastic, tiny
    routers_dir = tmp_path_factory.mktemp("elastic_routers")
    models_dir = tmp_path_factory.mktemp("diffusion_models")
    folder_paths.add_model_folder_path("elastic_routers", str(routers_dir))
    folder_paths.add_model_folder_path("diffusion_models", str(models_dir))
    return comfy[0], comfy[1], tiny, elastic, routers_dir, models_dir


def _loader(nodes):
    return nodes.NODE_CLASS_MAPPINGS["ElasticDiTRouterLoader"]()


def _released_file(path, model, seed=0):
    """A tiny Qwen-Image DiT file in the authors' layout: backbone keys plus gate_mlps.{i}.*"""
    dm = model.get_model_object("diffusion_model")
    sd = {k: v.clone().contiguous() for k, v in dm.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    refs = []
    for i in range(len(dm.transformer_blocks)):
        ref = ReleasedRouteGate(64)
        for p in ref.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.2
        with torch.no_grad():  # keep gates open so the run is not all skips
            ref.out[2].bias.fill_(1.0)
        refs.append(ref)
        sd.update({f"gate_mlps.{i}.{k}": v.contiguous() for k, v in ref.state_dict().items()})
    save_file(sd, str(path))
    return refs


def _block0_inputs(model):
    """Capture what block 0 sees during a plain run (nothing precedes it, so an elastic run sees the same)."""
    seen = []
    m = model.clone()

    def rec(args, extra):
        seen.append({k: args[k].clone() for k in ("img", "txt", "vec")})
        return extra["original_block"](args)
    m.set_model_patch_replace(rec, "dit", "double_block", 0)
    return m, seen


def test_released_checkpoint_lists_loads_and_routes_like_released_code(env):
    nodes, pack, tiny, el, _, models_dir = env
    model = tiny.build("qwen")
    refs = _released_file(models_dir / "qwen-image-edit-tiny.safetensors", model)
    names = _loader(nodes).INPUT_TYPES()["required"]["router_name"][0]
    assert "diffusion_models/qwen-image-edit-tiny.safetensors" in names
    ckpt, = _loader(nodes).load("diffusion_models/qwen-image-edit-tiny.safetensors")
    assert ckpt.meta.family == "qwen_image" and len(ckpt.routers) == 3
    assert ckpt.meta.elastic_config().delta == pytest.approx(0.015)
    plain, seen = _block0_inputs(model)
    tiny.sample(plain, "qwen", steps=3)
    patched = el.apply(nodes, model, ckpt, cache=False)
    tiny.sample(patched, "qwen", steps=3)
    rec = el.last_record(patched)
    ev = rec.events
    x = seen[0]  # step 0: block 0 sees the same input in both runs
    gate, _ = refs[0](torch.cat([x["txt"], x["img"]], dim=1), x["vec"])
    want = torch.sigmoid(gate.squeeze(-1)).detach()
    got = [p for s, b, p in zip(ev["step"], ev["block"], ev["p"]) if s == 0 and b == 0]
    assert torch.allclose(torch.tensor(got), want, atol=1e-5), (got, want)
    assert len(got) == 2  # cond and uncond rows, one decision each
    skip = pack.elastic_core.stats.SKIP
    assert all((a == skip) == (p < 0.5) for a, p in zip(ev["action"], ev["p"]))


def test_router_file_in_models_folder_round_trips(env):
    nodes, pack, tiny, el, routers_dir, _ = env
    model = tiny.build("flux")
    ckpt = el.make_routers(pack, model)
    pack.elastic_core.checkpoint.save_routers(str(routers_dir / "flux-tiny.safetensors"), ckpt.routers, ckpt.meta)
    assert "flux-tiny.safetensors" in _loader(nodes).INPUT_TYPES()["required"]["router_name"][0]
    loaded, = _loader(nodes).load("flux-tiny.safetensors")
    out = tiny.sample(el.apply(nodes, model, loaded, cache=False), "flux")
    assert torch.equal(out, tiny.sample(model, "flux"))


# -- bad input: each fails with its own clear message, before any sampling --------------------------

def _write_bad(kind, routers_dir, pack, el, tiny):
    ckpt = el.make_routers(pack, tiny.build("flux"))
    save = pack.elastic_core.checkpoint.save_routers
    name = f"bad-{kind}.safetensors"
    path = routers_dir / name
    if kind == "nan":
        with torch.no_grad():
            ckpt.routers[1].out[0].weight[0, 0] = float("nan")
        save(str(path), ckpt.routers, ckpt.meta)
    elif kind == "truncated":
        save(str(path), ckpt.routers, ckpt.meta)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 100])
    elif kind == "pickle":
        name = "bad-pickle.pt"
        torch.save(ckpt.routers.state_dict(), routers_dir / name)
    elif kind == "plain":
        save_file({"img_in.weight": torch.zeros(4, 4)}, str(path))
    elif kind in ("ln_eps", "max_reuse"):  # metadata edited after saving, as a hand-edited file would be
        save(str(path), ckpt.routers, ckpt.meta)
        from safetensors import safe_open
        from safetensors.torch import load_file
        with safe_open(str(path), "pt") as f:
            md = dict(f.metadata())
        md["ln_eps" if kind == "ln_eps" else "defaults"] = "nan" if kind == "ln_eps" else '{"max_reuse": 2.5}'
        save_file(load_file(str(path)), str(path), metadata=md)
    return name


@pytest.mark.parametrize("kind,words", [
    ("nan", ["NaN"]), ("truncated", ["truncated"]), ("pickle", ["pickle"]), ("plain", ["no E-DiT routers"]),
    ("ln_eps", ["ln_eps", "finite"]), ("max_reuse", ["max_reuse", "whole number"])])
def test_bad_router_files_refused_by_name(env, kind, words):
    nodes, pack, tiny, el, routers_dir, _ = env
    name = _write_bad(kind, routers_dir, pack, el, tiny)
    assert name in _loader(nodes).INPUT_TYPES()["required"]["router_name"][0]
    with pytest.raises(ValueError) as e:
        _loader(nodes).load(name)
    msg = str(e.value)
    assert name in msg and all(w in msg for w in words), msg


def test_wrong_family_block_count_and_dims_refused_at_apply(env):
    nodes, pack, tiny, el, *_ = env
    flux, qwen = tiny.build("flux"), tiny.build("qwen")
    with pytest.raises(ValueError, match="made for the 'qwen_image' family.*'flux'"):
        el.apply(nodes, flux, el.make_routers(pack, qwen))
    deeper = tiny.build("flux", depth=3)
    with pytest.raises(ValueError, match="has 4 routers.*has 5 blocks"):
        el.apply(nodes, deeper, el.make_routers(pack, flux))
    ckpt = el.make_routers(pack, flux)
    ec = pack.elastic_core
    wide = ec.router.RouterSet(ec.config.RouterConfig(96), ckpt.routers.block_names)
    meta = ec.checkpoint.RouterMeta.for_routers(wide, "flux")
    with pytest.raises(ValueError, match="reads width 96.*width 64"):
        el.apply(nodes, flux, ec.checkpoint.RouterCheckpoint(wide, meta, "wide.safetensors"))


def test_unsupported_family_lists_supported(env):
    nodes, pack, tiny, el, *_ = env
    flux = tiny.build("flux")
    ckpt = el.make_routers(pack, flux)
    other = flux.clone()
    other.add_object_patch("diffusion_model", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="supported families: qwen_image, flux, chroma"):
        el.apply(nodes, other, ckpt)


def test_folder_is_registered(env):
    import folder_paths
    nodes, *_ = env
    paths = folder_paths.get_folder_paths("elastic_routers")
    assert any(p.endswith(os.path.join("models", "elastic_routers")) for p in paths)


def test_fresh_install_gets_the_router_folder(env, tmp_path, monkeypatch):
    """On a fresh ComfyUI the folder exists once the pack loads, so users see where router files go."""
    import copy

    import folder_paths
    _, pack, *_ = env
    monkeypatch.setattr(folder_paths, "folder_names_and_paths", copy.deepcopy(folder_paths.folder_names_and_paths))
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "models"))
    pack.nodes.files.register_folder()
    assert os.path.isdir(tmp_path / "models" / "elastic_routers")
    assert folder_paths.get_folder_paths("elastic_routers")[0] == str(tmp_path / "models" / "elastic_routers")

