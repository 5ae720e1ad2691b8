"""The toy benchmark's baselines in their published forms, and the benchmark at a quick size."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from elastic_core.toy import baselines as B


def _doubling_model():
    """Block 0 doubles its input (so its residual IS the input); block 1 adds one."""
    def b0(img, txt, vec):
        return 2 * img, txt

    def b1(img, txt, vec):
        return img + 1, txt
    return SimpleNamespace(blocks=[b0, b1])


def _drive(stack, scales):
    base = torch.ones(2, 3, 4)  # [rows: uncond, cond of one sample, tokens, dim]
    return [stack(i, base * s, torch.zeros(2, 1, 4), torch.zeros(2, 4)) for i, s in enumerate(scales)]


def test_fbcache_keeps_the_reference_of_the_last_full_step():
    """Block 0's residual drifts 3 % a step; threshold 5 %: measured from the last FULL step, step 2
    is 6 % away and must recompute (a reference updated on cached steps would never recompute)."""
    stack, spent = B.fbcache_stack(_doubling_model(), 6, 1, threshold=0.05)
    outs = _drive(stack, [1.0, 1.03, 1.06, 1.09, 1.12, 1.15])
    assert spent.calls == [2, 0, 2, 0, 2, 0]  # rows that ran the rest of the stack
    assert torch.allclose(outs[1], 2 * 1.03 * torch.ones(2, 3, 4) + 1)  # cached: new block-0 output + old residual
    assert spent.blocks == 6 * 2 + 3 * 2  # block 0 always, block 1 on full steps


def test_fbcache_cap_and_window_force_full_steps():
    stack, spent = B.fbcache_stack(_doubling_model(), 6, 1, threshold=1e9, cap=2)
    _drive(stack, [1.0] * 6)
    assert spent.calls == [2, 0, 0, 2, 0, 0]
    stack, spent = B.fbcache_stack(_doubling_model(), 6, 1, threshold=1e9, start=0.5)
    _drive(stack, [1.0] * 6)
    assert spent.calls == [2, 2, 2, 0, 0, 0]  # caching only from step 3 of 6


def test_teacache_runs_first_and_last_steps_and_resets_its_sum():
    stack, spent = B.teacache_stack(_doubling_model(), 6, 1, threshold=0.25, poly=[1.0, 0.0],  # rescale = identity
                                    probe=lambda img, vec: img, probe_blocks=0.0)
    _drive(stack, [1.0, 1.1, 1.21, 1.331, 1.4641, 1.61051])  # the watched input changes 10 % a step
    assert spent.calls[0] == 2 and spent.calls[-1] == 2  # first and last always run
    assert spent.calls[1:5] == [0, 0, 2, 0]  # 0.1, 0.2 accumulate; 0.3 crosses 0.25 and resets


def test_teacache_rescale_fit_and_greedy_drop():
    x = np.linspace(0.01, 0.5, 40)
    coeffs = B.fit_rescale(list(zip(x, 2 * x + 0.1 * x ** 2)), degree=2)
    assert coeffs == pytest.approx([0.1, 2.0, 0.0], abs=1e-6)
    cost = {0: 5.0, 1: 1.0, 2: 3.0, 3: 0.5}
    assert B.greedy_drop(lambda drop: sum(cost[b] for b in drop), 4, 3) == [3, 1, 2]
    assert B.greedy_drop(lambda drop: sum(cost[b] for b in drop), 4, 2, keep=(3,)) == [1, 2]


def test_a_curve_is_read_at_its_own_point_despite_float_sums():
    from elastic_core.toy.benchmark import at_compute
    pts = [{"compute": 4 / 20 * (1 + 2e-16), "psnr": 12.0}, {"compute": 0.3, "psnr": 18.0}]
    assert pts[0]["compute"] > 0.2 and at_compute(pts, 0.2) == pytest.approx(12.0)
    assert at_compute(pts, 0.25) == pytest.approx(15.0) and at_compute(pts, 0.1) is None


def test_plans_follow_the_action_rates():
    from elastic_core.stats import RunRecord
    widths = (0.25, 0.5, 0.75, 1.0)
    rec = RunRecord(blocks=[{"name": "b0"}, {"name": "b1"}], widths=list(widths), config={})
    for step in range(2):
        for row in range(4):
            rec.add(step, 0, "cond", row, 0.3, 0.5, 0 if row < 3 else 2, 0)  # block 0: skip 3 of 4
            rec.add(step, 1, "cond", row, 0.9, 0.5, 2, 0)  # block 1: always runs at width 0.5
    acts, wid = B.action_rates([rec], 2, 2, widths)
    assert acts[0, 0].tolist() == [0.75, 0.0, 0.25] and wid[1, 1].tolist() == [0, 1, 0, 0]
    assert B.fixed_plan(acts, wid, widths)(0, 0)[0] == 0 and B.fixed_plan(acts, wid, widths)(0, 1) == (2, 0.5)
    plan = B.random_plan(acts, wid, widths, 0)
    draws = [plan(0, 0)[0] for _ in range(2000)]
    assert abs(np.mean(np.array(draws) == 0) - 0.75) < 0.04


def test_quick_benchmark_measures_every_method(tmp_path):
    from elastic_core.toy.report import format_report, run_benchmark
    r = run_benchmark("quick", folder=None, log=lambda s: None)
    c = r["curves"]
    dense = {p["steps"]: p for p in c["dense, fewer steps"]}
    ref = r["reference"]["ref_steps"]
    assert math.isinf(dense[ref]["psnr"]) and dense[ref]["ssim"] == pytest.approx(1.0)  # the reference itself
    assert [dense[n]["compute"] for n in sorted(dense)] == [n / ref for n in sorted(dense)]
    for name in ("FBCache", "TeaCache", "E-DiT (distill)", "E-DiT (anchored)", "E-DiT (data)", "random plan",
                 "fixed plan", "static pruned (trained)", "static pruned (untrained)"):
        assert c[name], name
        for p in c[name]:
            assert 0.0 < p["compute"] <= 1.1 and p["psnr_range"][0] <= p["psnr"] <= p["psnr_range"][1], (name, p)
    n = r["best_objective"]
    fewer = c[f"E-DiT ({n}) at 2 steps"]  # quick: E-DiT at 2 of 3 steps, and its plans at 2 steps as controls
    for name in ("random plan at 2 steps", "fixed plan at 2 steps"):
        assert [p["steps"] for p in c[name]] == [2] * len(fewer) and [p["target"] for p in c[name]] == \
            [p["target"] for p in fewer], name
        assert c[name][0]["compute"] <= 2 / 3 * 1.1, name
    assert set(r["low_compute"]) == {"0.15", "0.2"}
    static = c["static pruned (trained)"][0]
    assert static["compute"] == pytest.approx((12 - len(static["removed"])) / 12)
    assert r["matched"]["dense, fewer steps"] is not None and len(r["targets"]) == 6
    assert 0.0 <= r["shipped"]["near_tau"] <= 1.0
    json.dumps(r)
    text = format_report(r)
    assert "targets" in text and text.startswith("SMOKE RUN") and text.rstrip().endswith("--toy-size medium.")
    for word in ("inf", "nan", "MISSED"):  # the smoke run judges nothing, and a PSNR of identical images reads so
        assert word not in text, (word, text)
    assert "identical" in text or "not judged" in text


def test_report_lines_for_people():
    """An infinite PSNR (identical images) reads "identical", a target nothing measured "not measured"."""
    from elastic_core.toy.metrics import db
    from elastic_core.toy.report import _target_line
    assert db(float("inf")).strip() == "identical" and db(float("nan")).strip() == "n/a" and db(18.6) == "18.60 dB"
    assert "not measured" in _target_line({"target": "x", "value": float("nan"), "met": False}, smoke=False)
    assert "MISSED x: -1.000" in _target_line({"target": "x", "value": -1.0, "met": False}, smoke=False)
    assert "not judged" in _target_line({"target": "x", "value": -1.0, "met": False}, smoke=True)


def test_every_knob_moves_compute_one_way_and_routers_are_counted():
    """On two shipped-model scenes at 6 steps: a higher cache threshold or tau never spends more; E-DiT
    with nothing skipped or reused costs more than dense (its routers count); fewer steps cost their
    share exactly."""
    from elastic_core.toy import methods as M
    from elastic_core.toy import pipeline as P
    model, ckpt = P.load_dit(), P.load_toy_routers()
    scenes = M.SceneSet.make("t", 2, seed=3)
    poly = M.teacache_fit(model, scenes, 6)

    def computes(run, knobs):
        return [run(k).compute for k in knobs]
    fb = computes(lambda th: M.fbcache(model, scenes, 6, 6, th, cap=None), [0.0, 0.05, 0.3, 10.0])
    tea = computes(lambda th: M.teacache(model, scenes, 6, 6, th, poly), [0.0, 0.1, 1.0, 100.0])
    cfg = ckpt.meta.elastic_config().with_(cache=False)
    edit = computes(lambda tau: M.elastic(model, ckpt.routers, cfg.with_(tau=tau), scenes, 6, 6), [0.0, 0.5, 1.0])
    for name, cs in (("FBCache", fb), ("TeaCache", tea), ("E-DiT", edit)):
        assert all(a >= b - 1e-9 for a, b in zip(cs, cs[1:])), (name, cs)
        assert cs[0] > cs[-1], (name, cs)  # the knob does move compute
    assert fb[0] == pytest.approx(1.0)  # threshold 0: every step runs in full
    assert 1.0 < tea[0] < 1.01  # and TeaCache's probe of block 0's modulated input counts
    assert 1.0 < edit[0] < 1.1, edit  # tau 0: every block at full width, plus the routers
    assert edit[-1] < 0.5, edit  # tau 1: only gates saturated at p = 1.0 still run
    assert M.dense(model, scenes, 3, 6).compute == 0.5
