"""The widget's JS tests under `node --test`, fed a payload and what-if results computed by Python."""
import itertools
import json
import os
import shutil
import subprocess

import pytest

from elastic_core import heatmap
from elastic_core.config import ElasticConfig
from elastic_core.policy import Policy
from tests.core.test_heatmap import _record

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_node_tests_pass_against_python_numbers(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node (Node.js) is not installed: the widget's JS tests need it")
    pl = heatmap.payload(_record(unreached=(2,)))  # with a step a step cache answered: the widget counts it alike
    cases = []
    for view in range(len(pl["views"])):
        for tau, delta, k in [(0.5, 0.015, 2), (0.1, 0.015, 2), (0.5, 0.0, 2), (0.5, 0.1, 1), (0.6, 0.2, 5)]:
            exp = heatmap.what_if(pl, view, tau, delta, k)
            cases.append({"view": view, "tau": tau, "delta": delta, "max_reuse": k, "expected": exp})
    decide = []  # the policy itself, case by case: JS decide() must give what Python's Policy.decide gives
    for cfg in (ElasticConfig(), ElasticConfig(skip=False, width=False, delta=0.2, max_reuse=1)):
        for p, w, caching, reuses in itertools.product((0.2, 0.5, 0.51, 0.6, 0.9), (0.25, 1.0), (False, True),
                                                       (None, 0, 1, 10)):
            d = Policy(cfg).decide(0, 0, p, w, caching, reuses)
            decide.append({"config": cfg.to_dict(), "p": p, "width": w, "caching": caching, "reuses": reuses,
                           "expected": {"action": d.action, "width": d.width}})
    fixture = tmp_path / "fixture.json"
    fixture.write_text(json.dumps({"payload": pl, "cases": cases, "decide": decide}))
    r = subprocess.run([node, "--test", os.path.join(ROOT, "tests", "js", "heatmap.test.mjs")], cwd=ROOT,
                       env={**os.environ, "ELASTIC_FIXTURE": str(fixture)}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "# fail 0" in r.stdout and "# skipped 0" in r.stdout, r.stdout
