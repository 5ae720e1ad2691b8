"""Train Elastic Router on tiny real ComfyUI models, called the way ComfyUI's executor calls nodes
(under torch.inference_mode, on a model built under inference mode as a server loads it)."""
import os

import pytest
import torch

import tests.comfy  # noqa: F401  (bind our `tests` package before ComfyUI's)
from tests.comfy.cancel import cancel_at


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    import folder_paths

    from tests.comfy import elastic, tiny
    routers_dir = tmp_path_factory.mktemp("elastic_routers")
    folder_paths.add_model_folder_path("elastic_routers", str(routers_dir), is_default=True)
    return comfy[0], comfy[1], tiny, elastic, routers_dir


def _model(tiny, kind="flux"):
    with torch.inference_mode():  # as ComfyUI loads checkpoints: its weights are inference tensors
        return tiny.build(kind, seed=3, std=0.08)


def _inputs(tiny, model, kind="flux"):
    ctx = tiny.context_dim(model)
    with torch.inference_mode():
        pos, neg = tiny.conds(kind, 1, 0, 8, ctx)
        lat = {"samples": tiny.latent(kind, 1, 16)}
    return pos, neg, lat


def _train(nodes, model, pos, lat, **kw):
    node = nodes.NODE_CLASS_MAPPINGS["ElasticDiTTrainRouter"]()
    args = dict(steps=30, learning_rate=0.05, rho_g=0.3, rho_w=0.5, filename="tiny", seed=0,
                sampling_steps=4, teacher_runs=2)
    args.update(kw)
    with torch.inference_mode():
        return node.train(model, pos, lat, **args)[0]


def _executed(el, nodes, model, ckpt, kind="flux"):
    from tests.comfy import tiny
    m = el.apply(nodes, model, ckpt, delta=0.0, cache=False)
    with torch.inference_mode():
        out = tiny.sample(m, kind, cfg=1.0, steps=4)
    return el.last_record(m).totals(), out


def test_trained_file_loads_in_apply_and_cuts_compute(env):
    nodes, pack, tiny, el, routers_dir = env
    model = _model(tiny)
    pos, _, lat = _inputs(tiny, model)
    with torch.inference_mode():
        before = tiny.sample(model, "flux", cfg=1.0, steps=4)
    ckpt = _train(nodes, model, pos, lat)
    assert os.path.isfile(ckpt.path) and os.path.dirname(ckpt.path) == str(routers_dir)
    assert ckpt.meta.family == "flux" and (ckpt.meta.rho_g, ckpt.meta.rho_w) == (0.3, 0.5)
    # through the loader node, by the name it lists
    loader = nodes.NODE_CLASS_MAPPINGS["ElasticDiTRouterLoader"]()
    loaded = loader.load(os.path.basename(ckpt.path))[0]
    untrained = el.make_routers(pack, model)  # full-capacity init: every block runs at full width
    dense_tot, _ = _executed(el, nodes, model, untrained)
    tot, _ = _executed(el, nodes, model, loaded)
    assert dense_tot["executed_fraction"] > 0.99
    assert tot["executed_fraction"] < 0.9, tot
    # the user's model is unchanged: same weights, same samples
    with torch.inference_mode():
        after = tiny.sample(model, "flux", cfg=1.0, steps=4)
    assert torch.equal(before, after)
    for name, mod in model.get_model_object("diffusion_model").named_modules():
        assert not getattr(mod, "weight_function", []), f"{name} kept a weight function"
        assert "Elastic" not in type(mod).__name__, f"{name} is still a twin"


def test_gate_moves_toward_rho_g_and_resume_goes_on(env):
    nodes, pack, tiny, el, routers_dir = env
    model = _model(tiny)
    pos, _, lat = _inputs(tiny, model)
    # the released layout: the gate bias is its one open-ness knob (compact routers also move their
    # modulation; that they cut compute is test_trained_file_loads_in_apply_and_cuts_compute)
    with cancel_at(10):
        _train(nodes, model, pos, lat, filename="cancel me", save_every=3, steps=30, router_layout="released")
    path = os.path.join(routers_dir, "cancel me.safetensors")
    assert os.path.isfile(path) and os.path.isfile(path + ".train_state")
    from safetensors import safe_open
    with safe_open(path + ".train_state", "pt") as f:
        assert int(f.metadata()["step"]) == 10  # the step Cancel came at, not the last periodic save (9)
    ckpt = _train(nodes, model, pos, lat, filename="cancel me", steps=30, resume=True, router_layout="released")
    assert ckpt.path == path
    with safe_open(path + ".train_state", "pt") as f:
        assert int(f.metadata()["step"]) == 30
    # mean gate over blocks and teacher states moved from the open init (0.7) toward rho_g = 0.3
    p0 = el.make_routers(pack, model).routers[0].out[2].bias.sigmoid().item()
    gates = [r.out[2].bias.sigmoid().item() for r in ckpt.routers]
    assert p0 > 0.65 and sum(gates) / len(gates) < p0 - 0.05


def test_never_overwrites_and_refuses_bad_input_before_sampling(env):
    nodes, pack, tiny, el, routers_dir = env
    model = _model(tiny)
    pos, neg, lat = _inputs(tiny, model)
    a = _train(nodes, model, pos, lat, filename="same", steps=2)
    b = _train(nodes, model, pos, lat, filename="same", steps=2)
    assert a.path != b.path and os.path.isfile(a.path) and b.path.endswith("same_00001.safetensors")
    calls = []
    import comfy.utils
    comfy.utils.set_progress_bar_global_hook(lambda *a, **k: calls.append(a))
    try:
        with pytest.raises(ValueError, match="needs a negative"):
            _train(nodes, model, pos, lat, cfg=3.0)
        with pytest.raises(ValueError, match="plain file name"):
            _train(nodes, model, pos, lat, filename="../escape")
        with pytest.raises(FileNotFoundError, match="no training state"):
            _train(nodes, model, pos, lat, filename="never trained", resume=True)
        with pytest.raises(ValueError, match="Apply Elastic DiT"):
            _train(nodes, el.apply(nodes, model, a), pos, lat)
        qwen = _model(tiny, "qwen")
        qpos, _, qlat = _inputs(tiny, qwen, "qwen")
        with pytest.raises(ValueError, match="made for the 'flux' family"):
            _train(nodes, qwen, qpos, qlat, filename="same", resume=True)  # same.safetensors holds Flux routers
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert calls == []  # nothing sampled before the errors


@pytest.mark.parametrize("kind", ["qwen", "chroma", "flux2", "zimage", "wan"])
def test_other_families_train(env, kind):
    nodes, pack, tiny, el, routers_dir = env
    el.need(kind)
    model = _model(tiny, kind)
    pos, neg, lat = _inputs(tiny, model, kind)
    ckpt = _train(nodes, model, pos, lat, filename=f"tiny {kind}", steps=25, negative=neg, cfg=2.0)
    assert ckpt.meta.family == {"qwen": "qwen_image", "zimage": "z_image"}.get(kind, kind)
    import comfy.model_management
    assert not getattr(comfy.model_management, "in_training", False)  # ComfyUI's training flag restored
    tot, out = _executed(el, nodes, model, ckpt, kind)
    assert tot["executed_fraction"] < 0.95 and torch.isfinite(out).all()


def test_gradient_checkpointing_gives_the_same_routers(env):
    """The backward recomputes each block; ComfyUI's per-block callable must still run ITS block."""
    nodes, pack, tiny, el, routers_dir = env
    model = _model(tiny)
    pos, _, lat = _inputs(tiny, model)
    a = _train(nodes, model, pos, lat, filename="ckpt a", steps=3, gradient_checkpointing=False)
    b = _train(nodes, model, pos, lat, filename="ckpt b", steps=3, gradient_checkpointing=True)
    for k, v in a.routers.state_dict().items():
        torch.testing.assert_close(b.routers.state_dict()[k], v, rtol=1e-4, atol=1e-6, msg=k)
    c = el.make_routers(pack, model, layout=a.meta.router.layout).routers.state_dict()
    assert any(not torch.allclose(c[k], v) for k, v in a.routers.state_dict().items())  # training moved them


def test_rope_backward_matches_autograd_of_the_plain_formula(env):
    nodes, pack, tiny, el, routers_dir = env
    if not hasattr(getattr(torch.ops, "comfy_kitchen", None), "apply_rope"):
        pytest.skip("this ComfyUI's Flux attention does not use comfy-kitchen's RoPE op")
    pack.nodes.rope_grad.ensure_rope_grad()
    g = torch.Generator().manual_seed(0)
    ang = torch.rand(1, 1, 6, 4, generator=g) * 6.28  # [B, H, L, pairs]
    freqs = torch.stack([ang.cos(), -ang.sin(), ang.sin(), ang.cos()], -1).reshape(1, 1, 6, 4, 2, 2)

    def plain(x):  # ComfyUI's pre-kitchen apply_rope1
        x_ = x.reshape(*x.shape[:-1], -1, 1, 2)
        return (freqs[..., 0] * x_[..., 0] + freqs[..., 1] * x_[..., 1]).reshape(*x.shape)
    q, k = (torch.randn(1, 1, 6, 8, generator=g, requires_grad=True) for _ in range(2))
    w = torch.randn(1, 1, 6, 8, generator=g)
    oq, ok = torch.ops.comfy_kitchen.apply_rope(q, k, freqs)
    ((oq * w).sum() + (ok * w * 2).sum()).backward()
    q2, k2 = (t.detach().clone().requires_grad_(True) for t in (q, k))
    torch.testing.assert_close(oq, plain(q2))
    ((plain(q2) * w).sum() + (plain(k2) * w * 2).sum()).backward()
    torch.testing.assert_close(q.grad, q2.grad)
    torch.testing.assert_close(k.grad, k2.grad)
    x = torch.randn(1, 1, 6, 8, generator=g, requires_grad=True)
    (torch.ops.comfy_kitchen.apply_rope1(x, freqs) * w).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (plain(x2) * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
