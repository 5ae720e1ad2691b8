"""The run record: one event per step/block/stream/sample, totals, JSON round trip, schema checks."""
import json

import pytest

from elastic_core.heatmap import payload
from elastic_core.stats import SCHEMA_VERSION, RunRecord
from elastic_core.reference import double_run_fn
from elastic_core.runner import run_stack
from tests.core.helpers import begin, force, inputs, make_stack, start


def _record():
    blocks, routers = make_stack(3)
    force(routers[0], p=0.2)
    force(routers[1], p=0.505, width_idx=1)
    run = start(blocks, routers, num_steps=2, cache_start=0.0)
    img, txt, vec = inputs(b=2)
    keys = [("uncond", 0), ("cond", 0)]
    for s in range(2):
        begin(run, s, sigma=1.0 - 0.5 * s)
        run_stack(run, [double_run_fn(b, vec) for b in blocks], {"img": img, "txt": txt}, vec, row_keys=keys)
    return run.finish()


def test_one_event_per_step_block_stream_sample():
    rec = _record()
    assert len(rec) == 2 * 3 * 2
    ev = rec.events
    assert set(zip(ev["step"], ev["block"], ev["stream"], ev["sample"])) == {
        (s, b, st, 0) for s in range(2) for b in range(3) for st in range(2)}
    assert rec.streams == ["uncond", "cond"]
    assert rec.steps == {0: 1.0, 1: 0.5}
    assert rec.counts() == {"skip": 4, "reuse": 2, "run": 6, "nocache": 0}
    assert rec.mean_width() == pytest.approx((4 * 1.0 + 2 * 0.5) / 6)


def test_totals_and_json_round_trip():
    rec = _record()
    d = json.loads(rec.to_json())
    assert d["schema"] == "elastic-dit/run-record" and d["version"] == SCHEMA_VERSION
    t = d["totals"]
    assert 0 < t["executed_fraction"] < 1 and t["estimated_speedup"] > 1
    assert t["cache_bytes_peak"] > 0 and t["wall_time_s"] > 0
    back = RunRecord.from_json(rec.to_json())
    assert back.events == rec.events and back.totals() == rec.totals()


def test_bad_record_is_refused():
    with pytest.raises(ValueError, match="not an elastic-dit run record"):
        RunRecord.from_dict({"schema": "other"})
    d = json.loads(_record().to_json())
    d["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        RunRecord.from_dict(d)


def test_json_is_strict():
    """Non-finite numbers (a sigma of inf, an estimate with nothing executed) are written as null, never as
    a bare Infinity / NaN, which JSON.parse in the browser rejects."""
    rec = _record()
    rec.steps[0] = float("inf")
    rec.meta["note"] = float("nan")
    d = json.loads(rec.to_json(), parse_constant=lambda c: pytest.fail(f"bare {c} in the record JSON"))
    assert d["steps"][0]["sigma"] is None and d["meta"]["note"] is None
    pl = payload(rec)
    json.loads(json.dumps(pl, allow_nan=False))
    assert pl["steps"][0]["sigma"] is None
