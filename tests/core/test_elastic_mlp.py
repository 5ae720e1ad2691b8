"""Width slicing equals the eq. 13 masked computation, for every layout, at every width."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from elastic_core.elastic_mlp import (MLPLayout, elastic_mlp, masked_mlp, module_weights, prefix_mask,
                                      project_in, project_out)
from elastic_core.reference import RefSingleBlock, randomize_

WIDTHS = (0.25, 0.5, 0.75, 1.0)
gelu = lambda x: F.gelu(x, approximate="tanh")  # noqa: E731


@pytest.mark.parametrize("ratio", WIDTHS)
def test_plain_mlp(ratio):
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(16, 64), nn.Linear(64, 16)
    x = torch.randn(2, 5, 16)
    lay = MLPLayout(64)
    k = lay.channels(ratio)
    sliced = elastic_mlp(x, module_weights(fc1), module_weights(fc2), gelu, lay, ratio)
    masked = masked_mlp(x, module_weights(fc1), module_weights(fc2), gelu, lay, prefix_mask(64, k, x))
    assert k == int(64 * ratio)
    assert torch.allclose(sliced, masked, atol=1e-5)


@pytest.mark.parametrize("ratio", WIDTHS)
def test_gated_fused_and_separate(ratio):
    torch.manual_seed(1)
    m = 48
    fused, out = nn.Linear(16, 2 * m), nn.Linear(m, 16)
    x = torch.randn(2, 5, 16)
    lay = MLPLayout(m, gated=True)
    k = lay.channels(ratio)
    sliced = elastic_mlp(x, module_weights(fused), module_weights(out), F.silu, lay, ratio)
    masked = masked_mlp(x, module_weights(fused), module_weights(out), F.silu, lay, prefix_mask(m, k, x))
    assert torch.allclose(sliced, masked, atol=1e-5)
    w1, w3 = nn.Linear(16, m), nn.Linear(16, m)
    sliced2 = elastic_mlp(x, module_weights(w1), module_weights(out), F.silu, lay, ratio, fc_up=module_weights(w3))
    masked2 = masked_mlp(x, module_weights(w1), module_weights(out), F.silu, lay, prefix_mask(m, k, x),
                         fc_up=module_weights(w3))
    assert torch.allclose(sliced2, masked2, atol=1e-5)


@pytest.mark.parametrize("ratio", WIDTHS)
def test_fused_single_block_layout(ratio):
    torch.manual_seed(2)
    blk = randomize_(RefSingleBlock(16, 2), std=0.1)
    x, vec = torch.randn(2, 9, 16), torch.randn(2, 16)
    k = blk.layout.channels(ratio)
    sliced = blk(x, vec, ratio)
    masked_blk = RefSingleBlock(16, 2)
    masked_blk.load_state_dict(blk.state_dict())
    with torch.no_grad():  # zero mlp hidden channels >= k in the fused weights
        masked_blk.linear1.weight[48 + k:] = 0
        masked_blk.linear1.bias[48 + k:] = 0
        masked_blk.linear2.weight[:, 16 + k:] = 0
    assert torch.allclose(sliced, masked_blk(x, vec, 1.0), atol=1e-5)


def test_padded_projection_keeps_host_split_sizes():
    torch.manual_seed(3)
    lay = MLPLayout(32, gated=True, in_prefix=24)
    lin = nn.Linear(8, lay.in_rows)
    x = torch.randn(3, 8)
    k = lay.channels(0.25)
    full = project_in(x, lin.weight, lin.bias, lay, k, pad=True)
    ref = lin(x)
    assert full.shape == ref.shape
    keep = torch.zeros(lay.in_rows, dtype=torch.bool)
    keep[: 24 + k] = True
    keep[24 + 32: 24 + 32 + k] = True
    assert torch.allclose(full[:, keep], ref[:, keep], atol=1e-6)
    assert torch.count_nonzero(full[:, ~keep]) == 0
    out = nn.Linear(24 + 32, 4)
    h = torch.randn(3, 24 + 32)
    h_masked = h.clone()
    h_masked[:, 24 + k:] = 0
    lay_out = MLPLayout(32, out_prefix=24)
    assert torch.allclose(project_out(h, out.weight, out.bias, lay_out, k), out(h_masked), atol=1e-6)


def test_slices_are_views_not_copies():
    lin = nn.Linear(16, 64)
    seen = []

    def provider(x):
        seen.append(lin.weight.data_ptr())
        return lin.weight, lin.bias

    lay = MLPLayout(64)
    w, _ = provider(torch.zeros(1))
    assert w[: lay.channels(0.5)].data_ptr() == w.data_ptr()
    assert w[:, : lay.channels(0.5)].data_ptr() == w.data_ptr()


def test_bad_ratio_and_layout_are_refused():
    with pytest.raises(ValueError, match="width ratio"):
        MLPLayout(8).channels(0.0)
    with pytest.raises(ValueError):
        MLPLayout(0)
