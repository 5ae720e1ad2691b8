"""Width slicing reads the weights ComfyUI's cast path produces: fp8 storage with float32 compute,
and layers that cast in their own method (as GGUF layers do)."""
import pytest
import torch

from tests.comfy.test_exactness import _zero_beyond


@pytest.fixture(scope="module")
def env(comfy):
    from tests.comfy import elastic, tiny
    return comfy[0], comfy[1], tiny, elastic


@pytest.mark.parametrize("block", [0, 2])  # a double block's MLPs, a single block's fused projections
def test_fp8_storage_quarter_width(env, block):
    nodes, pack, tiny, el = env
    fp8 = dict(dtype=torch.float8_e4m3fn, manual_cast=torch.float32)
    model = tiny.build("flux", **fp8)
    dm = model.get_model_object("diffusion_model")
    assert dm.double_blocks[0].img_mlp[0].weight.dtype == torch.float8_e4m3fn
    assert dm.double_blocks[0].img_mlp[0].comfy_cast_weights
    ckpt = el.make_routers(pack, model)
    open_out = tiny.sample(el.apply(nodes, model, ckpt, cache=False), "flux")
    assert torch.equal(open_out, tiny.sample(model, "flux"))
    el.force(ckpt.routers[block], width_idx=0)
    out = tiny.sample(el.apply(nodes, model, ckpt, cache=False), "flux")
    ref_model = tiny.build("flux", **fp8)
    rdm = ref_model.get_model_object("diffusion_model")
    ref = pack.nodes.adapters.adapter_for(rdm).blocks(rdm)[block]
    _zero_beyond(rdm, ref.path, ref.spec.mlp_hidden // 4, "flux", ref.hook == "single_block")
    assert torch.allclose(out, tiny.sample(ref_model, "flux"), atol=1e-5)


def test_layer_with_its_own_cast_method(env):
    """A layer that stores its weight elsewhere and casts in `cast_bias_weight` (GGUF's way) is sliced
    from what that method returns, not from `.weight`."""
    nodes, pack, tiny, el = env
    weights = pack.nodes.weights

    class OwnCast(torch.nn.Linear):
        def cast_bias_weight(self, x):
            return self.real_weight.to(x), self.bias.to(x)

    layer = OwnCast(4, 6)
    layer.real_weight = torch.randn(6, 4)
    with torch.no_grad():
        layer.weight.zero_()  # what a naive `layer.weight[:k]` would read
    w, b = weights.effective_weights(layer, torch.zeros(1, 4))
    assert torch.equal(w, layer.real_weight) and torch.equal(b, layer.bias)
