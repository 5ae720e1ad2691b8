"""Router training: gradients through the straight-through paths, budgets pull, save / resume."""
import torch

from elastic_core.reference import plain_stack
from elastic_core.train import RouterTrainer, TrainConfig, distill_loss, elastic_forward, gate, width_mask
from tests.core.helpers import inputs, make_stack


def _setup(n=4, seed=0):
    blocks, routers = make_stack(n, seed=seed)
    for b in blocks:
        b.requires_grad_(False)
    img, txt, vec = inputs(b=4, seed=seed + 1)
    fns = [lambda x, m, b=b: dict(zip(("img", "txt"), b(x["img"], x["txt"], vec, m))) for b in blocks]
    hidden = [b.hidden for b in blocks]

    def perf_and_aux():
        out, aux = elastic_forward(routers, fns, hidden, {"img": img, "txt": txt}, vec, 0.5,
                                   lambda x: [x["txt"], x["img"]])
        with torch.no_grad():
            dense = plain_stack(blocks, img, txt, vec)[0]
        return distill_loss(out["img"], dense), aux
    return blocks, routers, perf_and_aux


def test_gradients_reach_gate_and_width_heads_through_straight_through():
    blocks, routers, perf_and_aux = _setup()
    perf, aux = perf_and_aux()
    (perf + torch.stack(aux.p).mean() + torch.stack(aux.r).mean()).backward()
    for r in routers:
        assert r.out[2].weight.grad is not None and r.out[2].weight.grad.abs().sum() > 0
        assert r.width_head.weight.grad is not None and r.width_head.weight.grad.abs().sum() > 0
    out = routers[0]([torch.randn(2, 5, 32)], torch.randn(2, 32))
    g, hard = gate(out, 0.5)
    assert torch.allclose(g.detach(), hard, atol=1e-6)  # forward is the hard decision
    m, r = width_mask(out, (0.25, 0.5, 0.75, 1.0), 128)
    assert torch.allclose(m.detach(), m.detach().round(), atol=1e-6) and m.shape == (2, 128)


def test_open_full_width_forward_equals_dense():
    blocks, routers, perf_and_aux = _setup()
    perf, aux = perf_and_aux()
    assert perf.item() < 1e-10 and all(h.all() for h in aux.g_hard)


def test_short_run_moves_mean_gate_toward_rho_g():
    blocks, routers, perf_and_aux = _setup()
    tr = RouterTrainer(routers, TrainConfig(rho_g=0.3, rho_w=0.5, lr=2e-2, lam=5.0))
    first = tr.train_step(perf_and_aux)
    tr.fit(perf_and_aux, steps=40)
    last = tr.history[-1]
    assert abs(last["mean_gate"] - 0.3) < abs(first["mean_gate"] - 0.3) - 0.1
    assert last["mean_width"] < first["mean_width"]


def test_save_resume_gives_the_same_state(tmp_path):
    blocks, routers, perf_and_aux = _setup()
    tr = RouterTrainer(routers, TrainConfig(lr=1e-2))
    tr.fit(perf_and_aux, steps=3)
    tr.save(str(tmp_path / "state.safetensors"))
    cont = [tr.train_step(perf_and_aux)["loss"] for _ in range(2)]
    blocks2, routers2, perf_and_aux2 = _setup()
    tr2 = RouterTrainer(routers2, TrainConfig(lr=1e-2))
    tr2.resume(str(tmp_path / "state.safetensors"))
    assert tr2.step == 3
    again = [tr2.train_step(perf_and_aux2)["loss"] for _ in range(2)]
    assert again == cont
    for a, b in zip(routers.parameters(), routers2.parameters()):
        assert torch.equal(a, b)


def test_cancel_stops_cleanly():
    blocks, routers, perf_and_aux = _setup()
    tr = RouterTrainer(routers, TrainConfig())
    seen = []
    n = tr.fit(perf_and_aux, steps=10, progress=seen.append, should_stop=lambda: len(seen) >= 2)
    assert n == 2 and tr.step == 2


def test_gate_estimators_default_noise_and_temperature():
    from elastic_core.router import RouterOutput
    logit = torch.tensor([-2.0, -0.1, 0.1, 2.0])
    out = RouterOutput(logit, torch.zeros(4, 4))
    g, hard = gate(out, 0.5)
    p = torch.sigmoid(logit)
    assert torch.equal(hard, (p >= 0.5).float()) and torch.allclose(g, hard)  # eq. 7, unchanged
    _, cold = gate(out, 0.5, temperature=0.1)
    assert torch.equal(cold, hard)  # temperature sharpens p, never moves the decision
    big = RouterOutput(torch.full((20000,), 0.5), torch.zeros(20000, 4))
    gn, hn = gate(big, 0.5, noise=1.0, generator=torch.Generator().manual_seed(0))
    assert set(hn.unique().tolist()) == {0.0, 1.0} and torch.allclose(gn.detach(), hn)  # forward stays hard
    assert abs(hn.mean().item() - torch.sigmoid(torch.tensor(0.5)).item()) < 0.02  # opens with probability p


def test_width_head_can_be_left_out_and_backbone_gets_its_own_lr():
    blocks, routers, _ = _setup()
    img, txt, vec = inputs(b=4, seed=1)
    fns = [lambda x, m, b=b: dict(zip(("img", "txt"), b(x["img"], x["txt"], vec, m))) for b in blocks]
    out, aux = elastic_forward(routers, fns, [b.hidden for b in blocks], {"img": img, "txt": txt}, vec, 0.5,
                               lambda x: [x["txt"], x["img"]], width=False)
    dense = plain_stack(blocks, img, txt, vec)[0]
    assert all(torch.equal(r, torch.ones(4)) for r in aux.r) and torch.allclose(out["img"], dense, atol=1e-6)
    for b in blocks:
        b.requires_grad_(True)
    backbone = torch.nn.ModuleList(blocks)
    tr = RouterTrainer(routers, TrainConfig(lr=1e-3, backbone_lr=1e-5, end_to_end=True), backbone=backbone)
    assert [g["lr"] for g in tr.opt.param_groups] == [1e-3, 1e-5]
    assert TrainConfig(steps=11, temperature_start=1.0, temperature_end=0.01).temperature(10) == 0.01


def _saved_bytes(fn) -> tuple[object, int]:
    """fn() run with autograd's saved tensors counted (distinct storages, bytes)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def test_router_recompute_keeps_nothing_and_gives_the_same_gradients():
    from elastic_core.config import RouterConfig
    from elastic_core.router import Router
    from elastic_core.train import route
    for layout in ("compact", "released"):
        router = Router(RouterConfig.of_layout(64, layout, hidden=16)).init_full_capacity()
        x = torch.randn(2, 50, 64, dtype=torch.bfloat16)  # bf16 block inputs, as a bf16 model's
        c = torch.randn(2, 64)
        grads, sizes = [], []
        for recompute in (False, True):
            router.zero_grad()
            out, n = _saved_bytes(lambda: route(router, [x[:, :10], x[:, 10:]], c, recompute))
            (out.gate_logit.sum() + out.width_logits.square().sum()).backward()
            grads.append([p.grad.clone() for p in router.parameters()])
            sizes.append(n)
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b)
        # kept: at least one fp32 copy of the tokens; recomputed: at most the conditioning [B, C]
        assert sizes[0] >= x.numel() * 4 and sizes[1] <= c.numel() * 4, (layout, sizes)


def test_resume_across_layouts_refused(tmp_path):
    import pytest

    from elastic_core.config import RouterConfig
    from elastic_core.router import RouterSet
    names = ["b0", "b1"]
    compact = RouterSet(RouterConfig.of_layout(32, "compact", hidden=8), names)
    RouterTrainer(compact, TrainConfig()).save(str(tmp_path / "c.state"))
    released = RouterSet(RouterConfig.of_layout(32, "released", hidden=8), names)
    with pytest.raises(ValueError, match="c.state holds compact-layout routers but this run trains released"):
        RouterTrainer(released, TrainConfig()).resume(str(tmp_path / "c.state"))
    other_rank = RouterSet(RouterConfig(32, hidden=8, mod_rank=4), names)
    with pytest.raises(ValueError, match="another shape"):
        RouterTrainer(other_rank, TrainConfig()).resume(str(tmp_path / "c.state"))
