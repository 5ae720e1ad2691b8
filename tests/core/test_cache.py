"""The residual cache: reuse adds the stored residual, K caps it, banks are per block/stream/sample."""
import torch

from elastic_core.reference import plain_stack
from elastic_core.stats import REUSE, RUN
from elastic_core.config import ElasticConfig
from elastic_core.runner import ElasticRun
from elastic_core.policy import Policy
from tests.core.helpers import begin, force, inputs, make_stack, start, step
from tests.router_probe import split_width

BAND = 0.505  # inside [tau, tau + delta] = [0.5, 0.515]


def _one_block_run(k=2, **cfg):
    blocks, routers = make_stack(1)
    force(routers[0], p=BAND)
    return blocks, routers, start(blocks, routers, num_steps=10, cache_start=0.0, max_reuse=k, **cfg)


def test_reuse_adds_stored_residual_and_caps_at_k():
    blocks, routers, run = _one_block_run(k=2)
    img, txt, vec = inputs()
    actions, stored = [], None
    for s in range(6):
        x_img = torch.randn(img.shape, generator=torch.Generator().manual_seed(s))  # a new input each step
        oi, ot = step(run, blocks, x_img, txt, vec, index=s)
        act = run.record.events["action"][-1]
        actions.append(act)
        ri, rt = plain_stack(blocks, x_img, txt, vec)
        if act == RUN:
            assert torch.equal(oi, ri)
            stored = (ri - x_img, rt - txt)
        else:
            assert torch.allclose(oi, x_img + stored[0], atol=1e-6)
            assert torch.allclose(ot, txt + stored[1], atol=1e-6)
            assert (oi - ri).abs().max() > 1e-4  # it really reused an old residual
    # run (no entry yet), reuse, reuse, run (K reached, refreshes), reuse, reuse
    assert actions == [RUN, REUSE, REUSE, RUN, REUSE, REUSE]
    assert run.record.events["reuse"] == [0, 1, 2, 0, 1, 2]
    rec = run.finish()
    assert rec.cache_bytes_peak == (img.numel() + txt.numel()) * 4


def test_k_zero_never_reuses():
    blocks, routers, run = _one_block_run(k=0)
    img, txt, vec = inputs()
    for s in range(3):
        step(run, blocks, img, txt, vec, index=s)
    assert run.finish().counts()["reuse"] == 0


def test_outside_window_no_cache():
    blocks, routers = make_stack(1)
    force(routers[0], p=BAND)
    run = start(blocks, routers, num_steps=4, cache_start=0.5)  # steps 2, 3 only
    img, txt, vec = inputs()
    for s in range(4):
        step(run, blocks, img, txt, vec, index=s)
    assert run.finish().events["action"] == [RUN, RUN, RUN, REUSE]


def test_above_band_runs_and_below_tau_skips():
    blocks, routers = make_stack(2)
    force(routers[0], p=0.6)
    force(routers[1], p=0.4)
    run = start(blocks, routers, num_steps=3, cache_start=0.0)
    img, txt, vec = inputs()
    for s in range(3):
        step(run, blocks, img, txt, vec, index=s)
    assert run.finish().counts() == {"skip": 3, "reuse": 0, "run": 3, "nocache": 0}


def test_streams_and_samples_never_share_a_residual():
    blocks, routers, run = _one_block_run(k=5)
    img, txt, vec = inputs(b=3, seed=7)
    keys = [("cond", 0), ("uncond", 0), ("cond", 1)]
    step(run, blocks, img, txt, vec, index=0, row_keys=keys)
    res = [plain_stack(blocks, img[r:r + 1], txt[r:r + 1], vec[r:r + 1])[0] - img[r:r + 1] for r in range(3)]
    img2 = img + 0.5
    oi, _ = step(run, blocks, img2, txt, vec, index=1, row_keys=keys)
    assert run.record.events["action"][-3:] == [REUSE] * 3
    for r in range(3):
        assert torch.allclose(oi[r:r + 1], img2[r:r + 1] + res[r], atol=1e-5)
    assert len(run.bank) == 3


def test_mixed_actions_in_one_batch():
    """Row 0 has a residual to reuse, row 1 is new: one reuses, one runs, each correct."""
    blocks, routers, run = _one_block_run(k=5)
    img, txt, vec = inputs(b=2, seed=8)
    step(run, blocks, img[:1], txt[:1], vec[:1], index=0, row_keys=[("cond", 0)])
    res0 = plain_stack(blocks, img[:1], txt[:1], vec[:1])[0] - img[:1]
    oi, _ = step(run, blocks, img, txt, vec, index=1, row_keys=[("cond", 0), ("cond", 1)])
    assert run.record.events["action"][-2:] == [REUSE, RUN]
    assert torch.allclose(oi[:1], img[:1] + res0, atol=1e-6)
    assert torch.allclose(oi[1:], plain_stack(blocks, img[1:], txt[1:], vec[1:])[0], atol=1e-5)


def test_shape_change_invalidates_residual():
    blocks, routers, run = _one_block_run(k=5)
    img, txt, vec = inputs(li=12)
    step(run, blocks, img, txt, vec, index=0)
    img2, _, _ = inputs(li=20)
    oi, _ = step(run, blocks, img2, txt, vec, index=1)
    assert run.record.events["action"][-1] == RUN
    assert torch.equal(oi, plain_stack(blocks, img2, txt, vec)[0])


def test_in_place_block_residual_is_right():
    """A host block that adds into its input in place (inplace=True): the residual is right."""
    blocks, routers, run = _one_block_run(k=5)
    img, txt, vec = inputs()

    def inplace(x, rows, width):
        oi, ot = blocks[0](x["img"], x["txt"], vec, width)
        x["img"].copy_(oi)
        return {"img": x["img"], "txt": ot}

    for s in range(2):
        begin(run, s)
        x = {"img": img.clone(), "txt": txt.clone()}
        out = run.block(0, x, vec, inplace, inplace=True)
    ref = plain_stack(blocks, img, txt, vec)[0]
    assert run.record.events["action"] == [RUN, REUSE]
    assert torch.allclose(out["img"], ref, atol=1e-6)


def _inplace_fn(block, vec):
    """A Flux-like host block: adds into the image stream it is given and returns that tensor."""
    def run(x, rows, width):
        v = vec if rows is None else vec.index_select(0, rows)
        oi, ot = block(x["img"], x["txt"], v, width)
        x["img"].copy_(oi)
        return {"img": x["img"], "txt": ot}
    return run


def test_in_place_block_rows_with_different_widths_cache_their_residuals():
    """Rows of one call that run at different widths run as separate groups on row copies; an in-place
    block changes those copies, and the residual each row caches must still be out - in (not 0)."""
    blocks, routers = make_stack(1)
    specs = [blocks[0].spec("double_blocks.0")]
    img, txt, vec = inputs(b=2)
    keys = [("cond", 0), ("cond", 1)]

    def run_steps(rows):
        run = ElasticRun(routers, specs, Policy(ElasticConfig(delta=0.5, max_reuse=5, cache_start=0.0)), num_steps=2)
        outs = []
        for s in range(2):
            begin(run, s)
            x = {"img": img[rows].clone(), "txt": txt[rows].clone()}
            outs.append(run.block(0, x, vec[rows], _inplace_fn(blocks[0], vec[rows]),
                                  row_keys=[keys[r] for r in rows], inplace=True))
        return outs[-1], run.finish()

    force(routers[0], p=0.55)  # in the band [0.5, 1.0]: both rows run once, then reuse
    split_width(routers[0], [txt, img], vec, [0, 1])  # row 0 at width 1/4, row 1 at full width
    batch, rec = run_steps([0, 1])
    first = rec.events["width"][:2]
    assert first == [0.25, 1.0], f"test setup: rows should run at different widths, got {first}"
    assert rec.events["action"][2:] == [REUSE, REUSE]
    for row in (0, 1):
        alone, _ = run_steps([row])
        assert torch.allclose(batch["img"][row], alone["img"][0], atol=1e-5), (row, (batch["img"][row] - alone["img"][0]).abs().max())


def test_cache_device_cpu_and_state_reset_on_finish():
    blocks, routers, run = _one_block_run(k=5, cache_device="cpu")
    img, txt, vec = inputs()
    step(run, blocks, img, txt, vec, index=0)
    assert run.bank.get(0, ("cond", 0)).residual["img"].device.type == "cpu"
    run.finish()
    assert len(run.bank) == 0 and run.bank.bytes == 0
