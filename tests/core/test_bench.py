"""The benchmark runs end to end at its quick size and reports every field (no timing asserted)."""
import json
import math

from elastic_core.bench import SIZES, format_core, plan_for, run_core_bench
from elastic_core.stats import REUSE, SKIP


def test_plan_shares_match_request():
    plan = plan_for(steps=10, blocks=20)
    acts = [plan(s, i)[0] for s in range(10) for i in range(20)]
    assert acts.count(SKIP) == 80 and acts.count(REUSE) == 30
    widths = [plan(s, i)[1] for s in range(10) for i in range(20) if plan(s, i)[0] != SKIP]
    assert abs(sum(widths) / len(widths) - 0.6) < 0.01


def test_quick_bench_reports_everything(tmp_path):
    r = run_core_bench("quick", "cpu")
    json.dumps(r)  # serialisable
    assert r["shape"]["dim"] == SIZES["quick"].dim
    assert 0 < r["router"]["fraction"] < math.inf
    assert set(r["mlp_width"]["widths"]) == {"0.25", "0.5", "0.75"}
    st = r["stack"]
    assert st["skipped"] > 0.2 and st["reused"] > 0.05 and st["ideal_speedup"] > 1.2
    assert st["cache_bytes_peak"] > 0
    text = format_core(r)
    assert "(a) router time" in text and "(c) wall speedup" in text
