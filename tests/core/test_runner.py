"""Algorithm 1 on reference blocks: exactness against the plain stack, skip, width, batches."""
import torch

from elastic_core.reference import plain_stack
from elastic_core.stats import RUN, SKIP
from tests.core.helpers import force, inputs, make_stack, start, step


def test_open_full_width_no_cache_is_bit_identical():
    blocks, routers = make_stack(6)
    img, txt, vec = inputs(b=2)
    run = start(blocks, routers, cache=False)
    oi, ot = step(run, blocks, img, txt, vec)
    ri, rt = plain_stack(blocks, img, txt, vec)
    assert torch.equal(oi, ri) and torch.equal(ot, rt)
    rec = run.finish()
    assert rec.counts() == {"skip": 0, "reuse": 0, "run": 12, "nocache": 0}


def test_forced_skip_equals_removing_blocks():
    blocks, routers = make_stack(6)
    for i in (1, 4):
        force(routers[i], p=0.01)
    img, txt, vec = inputs()
    run = start(blocks, routers, cache=False)
    oi, ot = step(run, blocks, img, txt, vec)
    ri, rt = plain_stack(blocks, img, txt, vec, skip=(1, 4))
    assert torch.equal(oi, ri) and torch.equal(ot, rt)
    acts = run.finish().events["action"]
    assert [a == SKIP for a in acts] == [False, True, False, False, True, False]


def test_skip_switch_off_runs_closed_blocks():
    blocks, routers = make_stack(3)
    force(routers[1], p=0.01)
    img, txt, vec = inputs()
    oi, _ = step(start(blocks, routers, cache=False, skip=False), blocks, img, txt, vec)
    ri, _ = plain_stack(blocks, img, txt, vec)
    assert torch.equal(oi, ri)


def _zero_hidden_beyond(block, k):
    with torch.no_grad():
        block.img_mlp[0].weight[k:] = 0
        block.img_mlp[0].bias[k:] = 0
        block.img_mlp[2].weight[:, k:] = 0


def test_width_quarter_equals_masked_weights():
    blocks, routers = make_stack(4)
    force(routers[2], width_idx=0)  # width 1/4
    img, txt, vec = inputs()
    oi, ot = step(start(blocks, routers, cache=False), blocks, img, txt, vec)
    import copy
    masked = copy.deepcopy(blocks)
    _zero_hidden_beyond(masked[2], masked[2].hidden // 4)
    ri, rt = plain_stack(masked, img, txt, vec)
    assert torch.allclose(oi, ri, atol=1e-5) and torch.allclose(ot, rt, atol=1e-5)
    ref_dense, _ = plain_stack(blocks, img, txt, vec)
    assert not torch.allclose(oi, ref_dense, atol=1e-4)  # the width cut really changed something


def test_width_switch_off_keeps_full_width():
    blocks, routers = make_stack(2)
    force(routers[0], width_idx=0)
    img, txt, vec = inputs()
    oi, _ = step(start(blocks, routers, cache=False, width=False), blocks, img, txt, vec)
    assert torch.equal(oi, plain_stack(blocks, img, txt, vec)[0])


def _straddle(router, tokens, vec):
    """Bias a router's gate so that sample 0 is skipped and sample 1 runs."""
    with torch.no_grad():
        router.out[2].weight.normal_(0, 1.0)
        logits = router(tokens, vec).gate_logit
        router.out[2].bias -= logits.mean()
        logits = router(tokens, vec).gate_logit
        if logits[0] > logits[1]:
            router.out[2].weight.neg_()
            router.out[2].bias.copy_(-router.out[2].bias)
            router.out[2].bias -= router(tokens, vec).gate_logit.mean()


def test_batch_decides_per_sample_and_equals_each_alone():
    blocks, routers = make_stack(4)
    img, txt, vec = inputs(b=2, seed=3)
    img[1] *= 3.0
    i1, t1 = blocks[0](img, txt, vec)  # what block 1 will see
    _straddle(routers[1], [t1, i1], vec)
    force(routers[2], width_idx=1)
    run = start(blocks, routers, cache=False)
    bi, bt = step(run, blocks, img, txt, vec)
    batch = run.finish()
    for r in range(2):
        run1 = start(blocks, routers, cache=False)
        si, st = step(run1, blocks, img[r:r + 1], txt[r:r + 1], vec[r:r + 1])
        alone = run1.finish()
        assert torch.allclose(bi[r:r + 1], si, atol=1e-5) and torch.allclose(bt[r:r + 1], st, atol=1e-5)
        rows = [j for j, s in enumerate(batch.events["sample"]) if s == r]
        assert [batch.events["action"][j] for j in rows] == alone.events["action"]
        assert [batch.events["width"][j] for j in rows] == alone.events["width"]
    acts = batch.events["action"]
    assert {acts[2], acts[3]} == {SKIP, RUN}, "the two samples should decide block 1 differently"


def test_executed_compute_counts_skips_and_widths():
    blocks, routers = make_stack(4)
    force(routers[0], p=0.01)
    force(routers[1], width_idx=1)
    img, txt, vec = inputs()
    run = start(blocks, routers, cache=False)
    step(run, blocks, img, txt, vec)
    f = run.finish().flops
    spec = blocks[0].spec("x")
    tokens = {"img": img.shape[1], "txt": txt.shape[1]}
    assert f["dense_attn"] == 4 * spec.attn_flops(tokens)
    assert f["exec_attn"] == 3 * spec.attn_flops(tokens)
    assert f["exec_mlp"] == 2 * spec.mlp_flops(tokens) + spec.mlp_flops(tokens, 0.5)
    assert f["router"] > 0


def test_non_finite_router_output_is_an_error_naming_the_block():
    blocks, routers = make_stack(3)
    with torch.no_grad():
        routers[1].out[2].bias.fill_(float("nan"))
    img, txt, vec = inputs()
    run = start(blocks, routers)
    import pytest
    with pytest.raises(FloatingPointError, match=r"block 1 \(double_blocks.1\).*NaN or Inf"):
        step(run, blocks, img, txt, vec)
    nan_input = img.clone()
    nan_input[0, 0, 0] = float("inf")
    blocks, routers = make_stack(2)
    with pytest.raises(FloatingPointError, match=r"block 0 \(double_blocks.0\)"):
        step(start(blocks, routers), blocks, nan_input, txt, vec)
