// The slider marks a preset makes (web/preset_marks.js); with ELASTIC_PRESETS (the server's table,
// written by tests/comfy/test_presets.py) every real preset is checked too.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { presetMarks } from "../../web/preset_marks.js";

const KNOBS = ["tau", "delta", "max_reuse", "cache_start_percent", "cache_end_percent"];
const LABELS = { tau: undefined, delta: "band", max_reuse: undefined, cache_start_percent: undefined, cache_end_percent: undefined };

test("sliders: nothing is marked and labels come back", () => {
  const m = presetMarks({ sets: {} }, KNOBS, LABELS, "sliders");
  assert.ok(Object.values(m).every((x) => !x.disabled && !("value" in x)));
  assert.equal(m.delta.label, "band");
});

test("a fixed preset writes its values and marks exactly those sliders", () => {
  const m = presetMarks({ sets: { tau: 0.5, delta: 0.1, max_reuse: 3 } }, KNOBS, LABELS, "paper: FLUX.1-dev");
  assert.deepEqual(KNOBS.filter((k) => m[k].disabled), ["tau", "delta", "max_reuse"]);
  assert.equal(m.delta.value, 0.1);
  assert.equal(m.delta.label, "delta = 0.1 (paper: FLUX.1-dev)");
  assert.equal(m.cache_start_percent.disabled, false);
});

test("router file defaults: the file's inputs are marked, no value is invented", () => {
  const m = presetMarks({ from_file: KNOBS }, KNOBS, LABELS, "router file defaults");
  assert.ok(KNOBS.every((k) => m[k].disabled && !("value" in m[k]) && m[k].label.endsWith("from router file")));
});

test("the server's table", { skip: !process.env.ELASTIC_PRESETS && "no ELASTIC_PRESETS" }, () => {
  const fx = JSON.parse(readFileSync(process.env.ELASTIC_PRESETS, "utf8"));
  for (const [name, entry] of Object.entries(fx.table)) {
    const m = presetMarks(entry, KNOBS, LABELS, name);
    const marked = KNOBS.filter((k) => m[k].disabled).sort();
    assert.deepEqual(marked, [...fx.overrides[name]].sort(), name);
    for (const [k, v] of Object.entries(entry.sets ?? {})) assert.equal(m[k].value, v, `${name}: ${k}`);
  }
});
