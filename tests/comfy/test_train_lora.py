"""Train Elastic Router with a LoRA (lora_rank > 0) on tiny real ComfyUI models, called the way
ComfyUI's executor calls nodes (under torch.inference_mode, on models built under inference mode).

Checked: the LoRA file loads with the core LoraLoaderModelOnly (every layer mapped), LoRA + routers
sample what the training student predicted, the user's model is unchanged, Cancel / resume keeps
the LoRA and its optimizer state (a resumed run equals an uninterrupted one), bad input is refused
before anything samples.
"""
import os
import types

import pytest
import torch
from safetensors import safe_open

import tests.comfy  # noqa: F401  (bind our `tests` package before ComfyUI's)
from tests.comfy.cancel import cancel_at

LR = dict(learning_rate=0.05, lora_learning_rate=0.01)


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    import folder_paths

    from tests.comfy import elastic, tiny
    routers_dir, loras_dir = tmp_path_factory.mktemp("elastic_routers"), tmp_path_factory.mktemp("loras")
    folder_paths.add_model_folder_path("elastic_routers", str(routers_dir), is_default=True)
    folder_paths.add_model_folder_path("loras", str(loras_dir), is_default=True)
    return comfy[0], comfy[1], tiny, elastic, str(loras_dir)


def _model(tiny, kind="flux", **cfg):
    with torch.inference_mode():  # as ComfyUI loads checkpoints: its weights are inference tensors
        if cfg:
            unet = {"flux": tiny.flux_config, "qwen": tiny.qwen_config, "chroma": tiny.chroma_config}[kind]()
            return tiny.build_from_config(kind, {**unet, **cfg}, seed=3, std=0.08)
        return tiny.build(kind, seed=3, std=0.08)


def _inputs(tiny, model, kind="flux"):
    ctx = tiny.context_dim(model)
    with torch.inference_mode():
        pos, neg = tiny.conds(kind, 1, 0, 8, ctx)
        return pos, neg, {"samples": tiny.latent(kind, 1, 16)}


def _train(nodes, model, pos, lat, **kw):
    node = nodes.NODE_CLASS_MAPPINGS["ElasticDiTTrainRouter"]()
    args = dict(steps=12, rho_g=0.3, rho_w=0.5, filename="tiny lora", seed=0, sampling_steps=4, teacher_runs=2,
                lora_rank=4, **LR)
    args.update(kw)
    with torch.inference_mode():
        return node.train(model, pos, lat, **args)


def _core_lora(nodes, model, name):
    return nodes.NODE_CLASS_MAPPINGS["LoraLoaderModelOnly"]().load_lora_model_only(model, name, 1.0)[0]


def _targets(pack, model):
    dm = model.get_model_object("diffusion_model")
    return pack.nodes.lora_train.lora_targets(dm, pack.nodes.adapters.adapter_for(dm).blocks(dm))


def _no_sampling():
    import comfy.utils
    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda *a, **k: calls.append(a))
    return calls


def test_lora_is_saved_beside_the_routers_and_loads_with_the_core_loader(env):
    nodes, pack, tiny, el, loras_dir = env
    model = _model(tiny)
    pos, _, lat = _inputs(tiny, model)
    with torch.inference_mode():
        before = tiny.sample(model, "flux", cfg=1.0, steps=4)
    ckpt, out_model = _train(nodes, model, pos, lat)
    name = os.path.basename(ckpt.path)
    lora_path = os.path.join(loras_dir, name)
    assert os.path.isfile(lora_path) and ckpt.meta.provenance["lora"] == name
    with safe_open(lora_path, "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
        up = f.get_tensor("diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight")
    assert meta["format"] == "elastic-dit-lora" and meta["router_file"] == name and meta["rank"] == "4"
    assert up.shape == (192, 4) and up.abs().max() > 0  # trained away from its zero start
    targets = _targets(pack, model)
    assert len(keys) == 3 * len(targets) and not any(w in k for k in keys for w in ("img_mod", "txt_mod", "modulation"))
    loaded = _core_lora(nodes, model, name)
    assert set(loaded.patches) == {f"diffusion_model.{t.path}.weight" for t in targets}  # every layer mapped
    assert set(out_model.patches) == set(loaded.patches)  # the node's model output: the same LoRA, loaded alike
    # the user's model is unchanged: same samples, no weight function or twin left on its layers
    with torch.inference_mode():
        assert torch.equal(before, tiny.sample(model, "flux", cfg=1.0, steps=4))
    assert not model.patches
    for mname, mod in model.get_model_object("diffusion_model").named_modules():
        assert not getattr(mod, "weight_function", []), f"{mname} kept a weight function"
        assert "Elastic" not in type(mod).__name__, f"{mname} is still a twin"
    # LoRA + routers cut compute under Apply and sample finite images
    m = el.apply(nodes, loaded, ckpt, delta=0.0, cache=False)
    with torch.inference_mode():
        img = tiny.sample(m, "flux", cfg=1.0, steps=4)
    assert torch.isfinite(img).all() and el.last_record(m).totals()["executed_fraction"] < 0.95


class _Probe:
    """Stands in for TrainLoop in run_student: the student (hooks, twins, LoRA weight wrappers) predicts
    once at the given (x, sigma) instead of training."""

    def __init__(self, ckpt, lora, x, sigma):
        self.routers, self.meta, self.lora = ckpt.routers, ckpt.meta, lora
        self.teacher = types.SimpleNamespace(sigma=sigma)
        self.x, self.sigma, self.state, self.out = x, sigma, None, None

    def __call__(self, predict, device):
        self.state.reset()
        with torch.no_grad():
            self.out = predict(self.x, self.sigma).detach()


@pytest.mark.parametrize("kind", ["flux", "qwen"])
def test_core_lora_and_routers_sample_what_training_saw(env, kind):
    """Apply Elastic DiT on LoraLoaderModelOnly(model) predicts, at a step of a real run, what the
    training student (masked blocks, straight-through gates, LoRA as weight wrappers) predicted there."""
    nodes, pack, tiny, el, loras_dir = env
    model = _model(tiny, kind)
    pos, neg, lat = _inputs(tiny, model, kind)
    ckpt, _ = _train(nodes, model, pos, lat, filename=f"probe {kind}", steps=15, rho_g=0.4)
    lora_name = os.path.basename(ckpt.path)
    seen = []
    m = el.apply(nodes, _core_lora(nodes, model, lora_name), ckpt, delta=0.0, cache=False)
    with torch.inference_mode():
        tiny.sample(m, kind, cfg=1.0, steps=3, callback=lambda i, x0, x, n: seen.append((i, x.clone(), x0.clone())))
    tot = el.last_record(m).totals()
    assert 0.0 < tot["executed_fraction"] < 0.99, "test setup: the routers must cut some compute"
    import comfy.samplers
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 3)
    step, x, want = seen[1]
    tn = pack.nodes.train_node
    lora = pack.elastic_core.lora.LoraSet(_targets(pack, model), 4)
    from safetensors.torch import load_file
    lora.load_comfy_state(load_file(os.path.join(loras_dir, lora_name)), lora_name)
    with torch.inference_mode():
        job = tn.TrainJob.validate(model, pos, neg, lat, 1.0, f"probe {kind} check", False,
                                   pack.elastic_core.train.TrainConfig(), 3, 1, 1, 1, 0, 4)
    probe = _Probe(ckpt, lora, x.float(), sigmas[step:step + 1].float())
    tn.run_student(job, probe)
    torch.testing.assert_close(probe.out, want, atol=2e-5, rtol=1e-4)
    # and the LoRA is part of it: the same routers on the plain model predict something else
    plain = el.apply(nodes, model, ckpt, delta=0.0, cache=False)
    other = []
    with torch.inference_mode():
        tiny.sample(plain, kind, cfg=1.0, steps=3, callback=lambda i, x0, xx, n: other.append(x0.clone()))
    assert not torch.allclose(other[0], seen[0][2], atol=1e-4)


def test_cancel_then_resume_equals_an_uninterrupted_run(env):
    """Routers, LoRA and both Adam groups survive Cancel: resumed, the run ends where one that was never
    interrupted ends."""
    nodes, pack, tiny, el, loras_dir = env
    model = _model(tiny)
    pos, _, lat = _inputs(tiny, model)
    whole, _ = _train(nodes, model, pos, lat, filename="whole", steps=10, save_every=100)

    with cancel_at(4):
        _train(nodes, model, pos, lat, filename="cut", steps=10, save_every=100)
    cut = os.path.join(os.path.dirname(whole.path), "cut.safetensors")
    with safe_open(cut + ".train_state", "pt") as f:
        assert int(f.metadata()["step"]) == 4
        n_opt = {k.split(".")[1] for k in f.keys() if k.startswith("opt.")}
        assert len(n_opt) == len(list(whole.routers.parameters())) + 2 * len(_targets(pack, model))
        saved_up = f.get_tensor("adapter.loras.0.up")
    with safe_open(os.path.join(loras_dir, "cut.safetensors"), "pt") as f:  # the LoRA file is that same step's
        assert torch.equal(f.get_tensor("diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight"), saved_up)
        assert f.metadata()["router_file"] == "cut.safetensors"
    resumed, _ = _train(nodes, model, pos, lat, filename="cut", steps=10, save_every=100, resume=True)
    for k, v in whole.routers.state_dict().items():
        torch.testing.assert_close(resumed.routers.state_dict()[k], v, rtol=1e-5, atol=1e-7, msg=k)
    with safe_open(os.path.join(loras_dir, "whole.safetensors"), "pt") as a, \
            safe_open(os.path.join(loras_dir, "cut.safetensors"), "pt") as b:
        for k in a.keys():
            torch.testing.assert_close(b.get_tensor(k), a.get_tensor(k), rtol=1e-5, atol=1e-7, msg=k)


def test_resume_takes_new_learning_rates(env):
    """Cancel, then resume with other rates: the run goes on at the new rates (both the routers' and the
    LoRA's), not at the ones saved with Adam's state."""
    import shutil

    import folder_paths
    nodes, pack, tiny, el, loras_dir = env
    model = _model(tiny)
    pos, _, lat = _inputs(tiny, model)
    with cancel_at(3):
        _train(nodes, model, pos, lat, filename="rates", steps=6, save_every=100)
    folder = folder_paths.get_folder_paths("elastic_routers")[0]
    for ext in ("", ".train_state"):  # the same saved state under a second name
        shutil.copy(os.path.join(folder, "rates.safetensors" + ext), os.path.join(folder, "rates b.safetensors" + ext))
    shutil.copy(os.path.join(loras_dir, "rates.safetensors"), os.path.join(loras_dir, "rates b.safetensors"))
    same, _ = _train(nodes, model, pos, lat, filename="rates", steps=6, save_every=100, resume=True)
    new, _ = _train(nodes, model, pos, lat, filename="rates b", steps=6, save_every=100, resume=True,
                    learning_rate=0.2, lora_learning_rate=0.05)
    assert any(not torch.equal(a, b) for a, b in zip(same.routers.state_dict().values(), new.routers.state_dict().values()))
    with safe_open(os.path.join(loras_dir, "rates.safetensors"), "pt") as a, \
            safe_open(os.path.join(loras_dir, "rates b.safetensors"), "pt") as b:
        assert any(not torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys() if "lora_up" in k)
    with safe_open(new.path + ".train_state", "pt") as f:
        assert [g["lr"] for g in __import__("json").loads(f.metadata()["param_groups"])] == [0.2, 0.05]


def test_a_new_name_never_hides_a_users_file_in_another_folder(env, tmp_path):
    """A second `loras` / `elastic_routers` folder (extra_model_paths.yaml) holds the user's style.safetensors:
    training with filename `style` must not write a file of that name into the first folder, where
    ComfyUI's name lookup would pick it instead of the user's."""
    import folder_paths
    nodes, pack, tiny, el, loras_dir = env
    model = _model(tiny)
    pos, _, lat = _inputs(tiny, model)
    extra_loras, extra_routers = tmp_path / "extra loras", tmp_path / "extra routers"
    extra_loras.mkdir()
    extra_routers.mkdir()
    (extra_loras / "style.safetensors").write_bytes(b"the user's LoRA")
    (extra_routers / "mine.safetensors").write_bytes(b"the user's routers")
    folder_paths.add_model_folder_path("loras", str(extra_loras))
    folder_paths.add_model_folder_path("elastic_routers", str(extra_routers))
    try:
        ckpt, _ = _train(nodes, model, pos, lat, filename="style", steps=1)
        assert os.path.basename(ckpt.path) == "style_00001.safetensors"
        assert not os.path.exists(os.path.join(loras_dir, "style.safetensors"))
        assert folder_paths.get_full_path("loras", "style.safetensors") == str(extra_loras / "style.safetensors")
        mine, _ = _train(nodes, model, pos, lat, filename="mine", steps=1, lora_rank=0)
        assert os.path.basename(mine.path) == "mine_00001.safetensors"
        assert folder_paths.get_full_path("elastic_routers", "mine.safetensors") == str(extra_routers / "mine.safetensors")
        assert (extra_loras / "style.safetensors").read_bytes() == b"the user's LoRA"
    finally:
        for kind, path in (("loras", extra_loras), ("elastic_routers", extra_routers)):
            folder_paths.folder_names_and_paths[kind][0].remove(str(path))


def test_bad_lora_input_is_refused_before_sampling(env):
    nodes, pack, tiny, el, loras_dir = env
    model = _model(tiny)
    pos, _, lat = _inputs(tiny, model)
    first, _ = _train(nodes, model, pos, lat, filename="refuse", steps=2)
    calls = _no_sampling()
    import comfy.utils
    try:
        with pytest.raises(ValueError, match=r"rank 65 is larger than layer .* at most 64"):
            _train(nodes, model, pos, lat, filename="too big", lora_rank=65)
        with pytest.raises(ValueError, match="set lora_rank 4 to resume"):
            _train(nodes, model, pos, lat, filename="refuse", resume=True, lora_rank=8)
        with pytest.raises(ValueError, match="set lora_rank 4 to resume"):
            _train(nodes, model, pos, lat, filename="refuse", resume=True, lora_rank=0)
        # the same routers fit (same width and blocks), but the MLPs are narrower: the LoRA cannot
        narrow = _model(tiny, mlp_ratio=2.0)
        with pytest.raises(ValueError, match="a LoRA for another model"):
            _train(nodes, narrow, pos, lat, filename="refuse", resume=True)
        # the trained LoRA loaded back into the model that resumes it would count twice
        with pytest.raises(ValueError, match="already has the LoRA being trained"):
            _train(nodes, _core_lora(nodes, model, "refuse.safetensors"), pos, lat, filename="refuse", resume=True)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert calls == []  # nothing sampled before the errors
    plain, _ = _train(nodes, model, pos, lat, filename="routers only", steps=1, lora_rank=0)
    with pytest.raises(ValueError, match="trained routers only"):
        _train(nodes, model, pos, lat, filename="routers only", resume=True)
    assert not os.path.exists(os.path.join(loras_dir, "routers only.safetensors"))
    assert first.path.endswith("refuse.safetensors")


@pytest.mark.parametrize("kind", ["qwen", "chroma", "flux2", "zimage", "wan"])
def test_other_families_train_a_lora_the_core_loader_maps(env, kind):
    nodes, pack, tiny, el, loras_dir = env
    el.need(kind)
    model = _model(tiny, kind)
    pos, neg, lat = _inputs(tiny, model, kind)
    ckpt, out_model = _train(nodes, model, pos, lat, filename=f"lora {kind}", steps=4, negative=neg, cfg=2.0,
                             lora_rank=2)
    loaded = _core_lora(nodes, model, os.path.basename(ckpt.path))
    targets = _targets(pack, model)
    assert set(loaded.patches) == {f"diffusion_model.{t.path}.weight" for t in targets} and targets
    with torch.inference_mode():
        a = tiny.sample(el.apply(nodes, loaded, ckpt), kind, cfg=2.0, steps=3)
        b = tiny.sample(el.apply(nodes, out_model, ckpt), kind, cfg=2.0, steps=3)
    assert torch.isfinite(a).all() and torch.equal(a, b)
