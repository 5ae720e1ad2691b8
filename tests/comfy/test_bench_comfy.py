"""devtools/bench_comfy.py at its smallest size runs on the CPU: every row it reports is there and sane.
(The numbers are not checked: timings on a shared CI machine prove nothing.)"""
import json


def test_quick_size_runs(comfy, tmp_path, capsys):
    from devtools import bench_comfy
    out = tmp_path / "comfy.json"
    assert bench_comfy.main(["--size", "quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["family"] for r in result["rows"]] == ["flux", "qwen"]
    for r in result["rows"]:
        assert r["dense_s"] > 0 and r["elastic_s"] > 0 and r["routers_s"] > 0 and r["ideal_speedup"] > 1
        assert 0 < r["routers_share"] < 1 and 0 < r["routers_skipped"] < 1, r
        assert set(r["per_step_s"]) >= {"dense", "elastic", "routers"}
        assert 0 < r["plan_compute"] < 1, r
        if r["easycache_s"] is not None:  # matched to the plan: the tried threshold whose share is nearest
            tried = r["easycache_tried"]
            assert len(tried) == len(bench_comfy.EASYCACHE_GRID) and all(0 < share <= 1 for _, share in tried)
            assert [r["easycache_threshold"], r["easycache_compute"]] in tried
            assert abs(r["easycache_compute"] - r["plan_compute"]) == min(abs(s - r["plan_compute"]) for _, s in tried)
    printed = capsys.readouterr().out
    assert "routers deciding" in printed and "EasyCache" in printed
