"""The cache budget: what the policy keeps, NOCACHE runs, exactness at no limit, and cache_device's
prefetch path (the same bank code on CPU as on CUDA; only the Mover's copies differ)."""
import math

import pytest
import torch

from elastic_core.config import ElasticConfig
from elastic_core.policy import Policy
from elastic_core.reference import plain_stack
from elastic_core.stats import NOCACHE, REUSE, RUN
from tests.core.helpers import force, inputs, make_stack, start, step

BAND = 0.505  # inside [tau, tau + delta] = [0.5, 0.515]


def _residual_bytes(img, txt):
    return (img[0].numel() + txt[0].numel()) * img.element_size()  # one block, one sample, both streams


def _run(ps, steps=3, rows=1, **cfg):
    """Blocks forced to gate probabilities ps; -> (outputs per step, record, bank)."""
    blocks, routers = make_stack(len(ps))
    for r, p in zip(routers, ps):
        force(r, p=p)
    run = start(blocks, routers, num_steps=steps, cache_start=0.0, max_reuse=5, **cfg)
    img, txt, vec = inputs(b=rows, seed=3)
    outs = []
    for s in range(steps):
        outs.append(step(run, blocks, img + 0.1 * s, txt, vec, index=s))
    bank = run.bank
    stats = (bank.prefetched, bank.prefetch_hits, dict(bank.lost))
    return outs, run.finish(), stats, (blocks, img, txt, vec)


def _actions(rec, block):
    return [a for a, b in zip(rec.events["action"], rec.events["block"]) if b == block]


def test_distance_is_zero_in_the_band_and_grows_away_from_it():
    pol = Policy(ElasticConfig(tau=0.5, delta=0.015, max_reuse=3))
    assert pol.distance(0.5, 0) == pol.distance(0.515, 2) == 0.0
    assert pol.distance(0.4, 0) == pytest.approx(0.1) and pol.distance(0.6, 0) == pytest.approx(0.085)
    assert pol.distance(0.505, 3) == math.inf  # reused K times: it must run before any further reuse


def test_admit_drops_the_farthest_first_and_only_those_farther_than_the_new_one():
    pol = Policy(ElasticConfig())
    held = [("near", 0.01, 10), ("far", 0.3, 10), ("mid", 0.1, 10)]
    assert pol.admit(0.0, 10, held, room=10) == []  # fits as it is
    assert pol.admit(0.0, 10, held, room=0) == ["far"]
    assert pol.admit(0.0, 25, held, room=0) == ["far", "mid", "near"]
    assert pol.admit(0.05, 25, held, room=0) is None  # "near" is likelier to be read than the new one
    assert pol.admit(0.3, 10, held, room=0) is None  # ties keep what is held


def test_no_limit_and_a_budget_that_never_binds_are_bit_identical():
    ps = [0.9, BAND, 0.2, BAND]
    outs_none, rec_none, _, _ = _run(ps, rows=2)
    outs_big, rec_big, _, _ = _run(ps, rows=2, cache_budget=10 ** 12)
    assert rec_none.events == rec_big.events and rec_none.counts()["reuse"] > 0
    for a, b in zip(outs_none, outs_big):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert rec_none.cache_bytes_peak == rec_big.cache_bytes_peak > 0


def test_a_zero_budget_keeps_nothing_and_computes_like_no_cache():
    ps = [BAND, 0.9, BAND]
    outs_zero, rec_zero, (_, _, lost), _ = _run(ps, cache_budget=0)
    outs_off, rec_off, _, _ = _run(ps, cache=False)
    for a, b in zip(outs_zero, outs_off):
        assert all(torch.equal(x, y) for x, y in zip(a, b))  # a run for want of cache is exact compute
    assert _actions(rec_zero, 0) == [RUN, NOCACHE, NOCACHE] and _actions(rec_zero, 1) == [RUN] * 3
    assert rec_zero.cache_bytes_peak == 0 and rec_zero.counts()["nocache"] == 4
    assert rec_zero.flops["exec_attn"] == rec_off.flops["exec_attn"]  # NOCACHE is paid as a run
    t = rec_zero.totals()
    assert t["ran"] == 1.0 and t["no_cache"] == pytest.approx(4 / 9) and t["reused"] == 0.0
    assert "for want of cache" in rec_zero.summary()
    assert set(lost) == {(0, ("cond", 0)), (1, ("cond", 0)), (2, ("cond", 0))}


def test_the_budget_keeps_the_borderline_block_and_drops_the_far_one():
    """Room for one residual: block 0 (p far above the band) ran first, block 1 (in the band) evicts it."""
    img, txt, _ = inputs(seed=3)
    one = _residual_bytes(img, txt)
    _, rec, (_, _, lost), _ = _run([0.9, BAND], cache_budget=one)
    assert _actions(rec, 1) == [RUN, REUSE, REUSE] and _actions(rec, 0) == [RUN] * 3
    assert rec.cache_bytes_peak == one and (0, ("cond", 0)) in lost


def test_a_residual_the_budget_dropped_runs_as_nocache_and_exactly():
    """Two borderline blocks, room for one: the first keeps its place (ties keep what is held), the
    second runs every step where it would have reused, and its output is the plain block's."""
    img, txt, _ = inputs(seed=3)
    outs, rec, _, (blocks, img, txt, vec) = _run([BAND, BAND], cache_budget=_residual_bytes(img, txt))
    assert _actions(rec, 0) == [RUN, REUSE, REUSE] and _actions(rec, 1) == [RUN, NOCACHE, NOCACHE]
    assert rec.counts() == {"skip": 0, "reuse": 2, "run": 2, "nocache": 2}
    assert rec.cache_bytes_stored == _residual_bytes(img, txt)  # block 1's residuals were never kept
    # step 1: block 0 reused its step-0 residual, block 1 ran on that exactly
    x1 = img + 0.1
    r0 = plain_stack(blocks[:1], img, txt, vec)
    h_img, h_txt = x1 + (r0[0] - img), txt + (r0[1] - txt)
    want = plain_stack(blocks[1:], h_img, h_txt, vec)
    assert torch.allclose(outs[1][0], want[0], atol=1e-6) and torch.allclose(outs[1][1], want[1], atol=1e-6)


def test_stored_and_read_bytes_are_counted():
    img, txt, _ = inputs(seed=3)
    one = _residual_bytes(img, txt)
    _, rec, _, _ = _run([BAND, 0.2], steps=3)  # block 0: run, reuse, reuse; block 1 skipped
    assert rec.cache_bytes_stored == one and rec.cache_bytes_read == 2 * one
    assert rec.totals()["cache_bytes_read"] == 2 * one


def test_cache_device_takes_the_prefetch_path_and_stays_exact():
    ps = [BAND, 0.9, BAND, BAND]
    outs_gpu_home, rec_a, _, _ = _run(ps, steps=4, rows=2)
    outs_cpu_home, rec_b, (fetched, hits, _), _ = _run(ps, steps=4, rows=2, cache_device="cpu")
    assert rec_a.events == rec_b.events
    for a, b in zip(outs_gpu_home, outs_cpu_home):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # blocks 2 and 3 follow a block, and their last p lies in the band: fetched ahead, then read
    assert fetched > 0 and hits > 0 and hits <= fetched


def test_prefetched_copies_do_not_outlive_their_block():
    blocks, routers = make_stack(3)
    for r in routers:
        force(r, p=BAND)
    run = start(blocks, routers, num_steps=3, cache_start=0.0, max_reuse=5, cache_device="cpu")
    img, txt, vec = inputs(b=2)
    for s in range(3):
        step(run, blocks, img, txt, vec, index=s)
        assert {k[0] for k in run.bank._ahead} <= {0}  # after the last block: only block 0's, for next step
    run.finish()
    assert not run.bank._ahead and not run.bank.lost


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1GB", float("nan")])
def test_a_bad_budget_is_refused(bad):
    with pytest.raises(ValueError, match="cache_budget"):
        ElasticConfig(cache_budget=bad)


def test_the_heatmap_draws_a_nocache_run_as_a_run_with_a_ring_and_names_the_cache():
    import numpy as np
    from elastic_core import heatmap
    _, rec, _, _ = _run([BAND], cache_budget=0)
    pl = heatmap.payload(rec)
    assert pl["views"][0]["action"][0] == [RUN, NOCACHE, NOCACHE]
    img = heatmap.render(pl, 0)  # cells of 12 x 8 px: step 1's cell starts at x = 12
    colour = lambda c: (img == heatmap._hex(heatmap.PALETTE[c]).astype(np.uint8)).all(-1)  # noqa: E731
    assert colour("nocache")[0:8, 12:24].any() and colour("width")[0:8, 12:24].any()
    assert not colour("nocache")[0:8, 0:12].any()  # the first run was an ordinary one
    line = heatmap.cache_line(pl["summary"], pl["config"])
    assert line == "cache peak 0.0 MiB, budget 0.00 GiB, no cache 67%", line
    _, rec, _, _ = _run([BAND])
    assert heatmap.cache_line(rec.totals(), rec.config).endswith("budget none")
    assert heatmap.picture(heatmap.payload(rec), 0).shape[2] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the pinned / side-stream copies are "
                    "checked where one is present (devtools/bench_cache_budget.py offload measures the overlap)")
def test_cuda_mover_round_trips_exactly_through_pinned_memory():
    from elastic_core.cache import Mover
    mover = Mover(torch.device("cpu"))
    t = torch.randn(300, 64, device="cuda", dtype=torch.bfloat16)
    host = mover.store(t)
    assert host.device.type == "cpu" and host.is_pinned()
    back, done = mover.fetch(host, t.device, torch.float32)
    assert done is not None
    assert torch.equal(Mover.ready(back, done), t.float())
    blocks, routers = make_stack(3)
    for r in routers:
        force(r, p=BAND)
    outs = {}
    for where in (None, "cpu"):
        run = start([b.cuda() for b in blocks], routers.cuda(), num_steps=3, cache_start=0.0, max_reuse=5,
                    cache_device=where)
        img, txt, vec = (x.cuda() for x in inputs(b=2))
        outs[where] = [step(run, blocks, img + s, txt, vec, index=s) for s in range(3)]
        assert where is None or run.bank.prefetch_hits > 0
    assert all(torch.equal(a, b) for x, y in zip(outs[None], outs["cpu"]) for a, b in zip(x, y))


@pytest.mark.parametrize("order", [[("cond", 0), ("cond", 1)], [("cond", 1), ("cond", 0)]])
def test_a_residual_read_in_this_call_is_not_dropped_for_another_rows_new_one(order):
    """Row cond0 reuses for the K-th time (its residual can never be read again afterwards), while row
    cond1 of the same call runs and wants room: cond0's residual is still read by this call."""
    blocks, routers = make_stack(1)
    force(routers[0], p=BAND)
    img, txt, vec = inputs(b=2, seed=3)
    run = start(blocks, routers, num_steps=2, cache_start=0.0, max_reuse=1,
                cache_budget=_residual_bytes(img, txt))
    step(run, blocks, img[:1], txt[:1], vec[:1], index=0, row_keys=[("cond", 0)])
    rows = [k[1] for k in order]
    oi, _ = step(run, blocks, img[rows], txt[rows], vec[rows], index=1, row_keys=order)
    at = rows.index(0)
    acts = dict(zip(order, run.record.events["action"][-2:]))
    assert acts[("cond", 0)] == REUSE and acts[("cond", 1)] == RUN
    res0 = plain_stack(blocks, img[:1], txt[:1], vec[:1])[0] - img[:1]
    assert torch.allclose(oi[at:at + 1], img[:1] + res0, atol=1e-6)
    assert run.record.events["reuse"][-2:][at] == 1


def test_a_guided_pair_is_kept_or_dropped_together():
    """cond and uncond of a sample: a budget with room for one of the two keeps neither (split, guidance
    would amplify a stale residual in one half); room for both keeps both."""
    img, txt, _ = inputs(b=2, seed=3)
    one = _residual_bytes(img, txt)
    keys = [("cond", 0), ("uncond", 0)]
    for budget, want in ((3 * one // 2, NOCACHE), (2 * one, REUSE)):
        blocks, routers = make_stack(1)
        force(routers[0], p=BAND)
        run = start(blocks, routers, num_steps=3, cache_start=0.0, max_reuse=5, cache_budget=budget)
        img, txt, vec = inputs(b=2, seed=3)
        for s in range(3):
            step(run, blocks, img, txt, vec, index=s, row_keys=keys)
        assert run.record.events["action"] == [RUN, RUN] + [want] * 4, (budget, run.record.events["action"])
