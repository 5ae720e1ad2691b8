"""The router against an independent re-implementation of the authors' released RouteGate."""
import torch
from torch import nn

from elastic_core.config import RouterConfig
from elastic_core.router import Router


class ReleasedRouteGate(nn.Module):
    """Written from the released code's description: SiLU+Linear -> (shift, scale, unused),
    LayerNorm without affine, modulate, Linear -> ReLU -> Linear(1), width head, mean over tokens."""

    def __init__(self, dim, hidden=128):
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.out = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.width_head = nn.Linear(hidden, 4)

    def forward(self, image, temb):
        shift, scale, _ = self.img_mod(temb).chunk(3, dim=-1)
        x = self.norm(image) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
        h = self.out[1](self.out[0](x))
        return self.out[2](h).mean(dim=1), self.width_head(h).mean(dim=1)


def test_router_equals_released_computation():
    torch.manual_seed(0)
    d = 64
    ref = ReleasedRouteGate(d)
    for p in ref.parameters():
        nn.init.normal_(p, 0, 0.2)
    ours = Router(RouterConfig(d))
    ours.load_state_dict(ref.state_dict())  # same key names as the released checkpoint
    txt, img, temb = torch.randn(3, 7, d), torch.randn(3, 20, d), torch.randn(3, d)
    gate, width = ref(torch.cat([txt, img], dim=1), temb)
    out = ours([txt, img], temb)
    assert torch.allclose(out.gate_logit, gate.squeeze(-1), atol=1e-5, rtol=1e-5)
    assert torch.allclose(out.width_logits, width, atol=1e-5, rtol=1e-5)
    assert torch.allclose(out.p, torch.sigmoid(gate.squeeze(-1)), atol=1e-6)
    assert torch.equal(out.width_index, width.argmax(-1))
    whole = ours(torch.cat([txt, img], dim=1), temb)  # parts and concatenation agree
    assert torch.allclose(whole.gate_logit, out.gate_logit, atol=1e-6)


def test_router_state_dict_keys_match_released():
    keys = set(Router(RouterConfig(16)).state_dict())
    assert keys == {"img_mod.1.weight", "img_mod.1.bias", "out.0.weight", "out.0.bias",
                    "out.2.weight", "out.2.bias", "width_head.weight", "width_head.bias"}


def test_full_capacity_init_is_open_and_full_width():
    r = Router(RouterConfig(32)).init_full_capacity()
    out = r(torch.randn(2, 10, 32), torch.randn(2, 32))
    assert torch.allclose(out.p, torch.full((2,), 0.7), atol=1e-2)
    assert out.width_index.tolist() == [3, 3]


def test_bf16_tokens_are_read_in_router_precision():
    r = Router(RouterConfig(32))
    x, c = torch.randn(1, 10, 32), torch.randn(1, 32)
    assert torch.allclose(r(x.bfloat16(), c.bfloat16()).gate_logit, r(x, c).gate_logit, atol=0.05)
    assert r(x.bfloat16(), c).gate_logit.dtype == torch.float32


def test_cond_dim_may_differ():
    r = Router(RouterConfig(32, cond_dim=48))
    assert r(torch.randn(2, 5, 32), torch.randn(2, 48)).width_logits.shape == (2, 4)


# -- the compact layout ------------------------------------------------------------------------------

def test_compact_router_is_the_released_computation_with_a_low_rank_modulation():
    """A released RouteGate whose modulation weight is up @ down (gate rows zero) computes the same."""
    torch.manual_seed(0)
    d, r = 64, 8
    ours = Router(RouterConfig(d, mod_rank=r))
    for p in ours.parameters():
        nn.init.normal_(p, 0, 0.2)
    ref = ReleasedRouteGate(d)
    with torch.no_grad():
        ref.img_mod[1].weight.copy_(torch.cat([ours.mod_up.weight @ ours.mod_down.weight, torch.zeros(d, d)]))
        ref.img_mod[1].bias.copy_(torch.cat([ours.mod_up.bias, torch.zeros(d)]))
        for k in ("out.0.weight", "out.0.bias", "out.2.weight", "out.2.bias", "width_head.weight", "width_head.bias"):
            ref.state_dict()[k].copy_(ours.state_dict()[k])
    txt, img, temb = torch.randn(3, 7, d), torch.randn(3, 20, d), torch.randn(3, d)
    gate, width = ref(torch.cat([txt, img], dim=1), temb)
    out = ours([txt, img], temb)
    assert torch.allclose(out.gate_logit, gate.squeeze(-1), atol=1e-4, rtol=1e-4)
    assert torch.allclose(out.width_logits, width, atol=1e-4, rtol=1e-4)


def test_compact_router_size_at_flux_width():
    """The issue's budget: at most ~1 M parameters per router at D = 3072; the released one has 28.7 M."""
    with torch.device("meta"):
        compact = sum(p.numel() for p in Router(RouterConfig.of_layout(3072, "compact")).parameters())
        released = sum(p.numel() for p in Router(RouterConfig.of_layout(3072, "released")).parameters())
    assert compact == 3072 * 32 + 32 * 2 * 3072 + 2 * 3072 + 3072 * 128 + 128 + 129 + 4 * 129 == 695_045
    assert released == 3072 * 3 * 3072 + 3 * 3072 + 3072 * 128 + 128 + 129 + 4 * 129 == 28_714_757
    assert set(Router(RouterConfig(16, mod_rank=4)).state_dict()) == {
        "mod_down.weight", "mod_up.weight", "mod_up.bias", "out.0.weight", "out.0.bias", "out.2.weight",
        "out.2.bias", "width_head.weight", "width_head.bias"}


def test_compact_init_matches_the_released_modulation_scale():
    """Both layouts start with shift / scale of about the same spread (the same training start)."""
    d, g = 512, torch.Generator().manual_seed(0)
    c = torch.randn(256, d, generator=g)
    stds = [torch.cat(Router(RouterConfig.of_layout(d, lay)).init_full_capacity(generator=g).modulation(c)).std()
            for lay in ("released", "compact")]
    assert 0.8 < float(stds[1] / stds[0]) < 1.25, stds
    out = Router(RouterConfig(d, mod_rank=8)).init_full_capacity()(torch.randn(2, 10, d), c[:2])
    assert torch.allclose(out.p, torch.full((2,), 0.7), atol=1e-2) and out.width_index.tolist() == [3, 3]


def test_bad_mod_rank_refused():
    import pytest
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="mod_rank"):
            RouterConfig(16, mod_rank=bad)
    with pytest.raises(ValueError, match="layout must be one of compact, released"):
        RouterConfig.of_layout(16, "small")
