// Unit tests of the widget's pure drawing and data functions: `node --test tests/js/`.
// ELASTIC_FIXTURE may name a payload written by Python (tests/core/test_widget_js.py) with the what-if
// results Python computed, so that both sides are held to the same numbers.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { canvasHeightFor, cellAt, decide, drawHeatmap, emptyPayload, layout, mergeStep, NOCACHE, ramp, REUSE, RUN, SKIP, summaryText,
  whatIf }
  from "../../web/heatmap.js";

const PALETTE = { ramp: ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"], skip: "#000000", skip_alpha: 0.6,
  reuse: "#ffffff", width: "#ff7f0e", nocache: "#ff4fd8", tau: "#ff2d55", empty: "#2b2b2b", grid: "#151515", text: "#dddddd" };

// A canvas context that records what is drawn.
function recorder() {
  const ops = [];
  const ctx = { fillStyle: "", strokeStyle: "", globalAlpha: 1, font: "",
    fillRect(x, y, w, h) { ops.push({ op: "rect", x, y, w, h, fill: this.fillStyle, alpha: this.globalAlpha }); },
    fillText(t, x, y) { ops.push({ op: "text", t, x, y }); },
    strokeRect(x, y, w, h) { ops.push({ op: "stroke", x, y, w, h }); }, setLineDash() {} };
  return { ctx, ops };
}

const grid = {
  blocks: [{ name: "double_blocks.0", group: "double" }, { name: "single_blocks.0", group: "single" }],
  steps: [{ index: 0, sigma: 1, cache: false }, { index: 1, sigma: 0.5, cache: true }, { index: 2, sigma: 0.2, cache: true }],
  palette: PALETTE,
  view: { p: [[0.2, 0.9, 0.505], [0.7, 0.6, null]], action: [[SKIP, RUN, REUSE], [RUN, RUN, null]],
          width: [[1, 0.5, 1], [0.25, 1, null]], reuse: [[0, 0, 1], [0, 0, null]] },
};

test("one cell per block and step that has a decision; empty cells are filled but not counted", () => {
  const { ctx, ops } = recorder();
  const out = drawHeatmap(ctx, grid, { width: 400, height: 200, tau: 0.5, delta: 0.015, estimate: false });
  assert.equal(out.cells, 5);
  const lay = out.layout;
  const at = (b, s) => ops.filter((o) => o.op === "rect" && o.x === lay.x0 + s * lay.cw && o.y === lay.y0 + b * lay.ch);
  assert.equal(at(0, 0)[0].fill, ramp(0.2, PALETTE));
  assert.ok(at(0, 0).some((o) => o.fill === PALETTE.skip && o.alpha === PALETTE.skip_alpha), "skipped cell is veiled");
  assert.equal(at(1, 2)[0].fill, PALETTE.empty);
});

test("reuse draws a dot, run draws a width bar as long as the width", () => {
  const { ctx, ops } = recorder();
  const { layout: lay } = drawHeatmap(ctx, grid, { width: 400, height: 200, tau: 0.5, delta: 0.015 });
  const inCell = (b, s) => ops.filter((o) => o.op === "rect" && o.x >= lay.x0 + s * lay.cw && o.x < lay.x0 + (s + 1) * lay.cw
    && o.y >= lay.y0 + b * lay.ch && o.y < lay.y0 + (b + 1) * lay.ch);
  assert.ok(inCell(0, 2).some((o) => o.fill === PALETTE.reuse), "reuse dot");
  const bars = (b, s) => inCell(b, s).filter((o) => o.fill === PALETTE.width);
  assert.equal(bars(1, 0).length, 1);
  const w = lay.cw - 1;
  assert.ok(Math.abs(bars(1, 0)[0].w - w * 0.25) < 1e-9 && Math.abs(bars(0, 1)[0].w - w * 0.5) < 1e-9);
});

test("a run for want of cache draws its width bar and a ring, and the legend says what the ring is", () => {
  const view = { ...grid.view, action: [[SKIP, RUN, NOCACHE], [RUN, RUN, null]] };
  const { ctx, ops } = recorder();
  const strokes = [];
  ctx.strokeRect = function (x, y, w, h) { strokes.push({ x, y, w, h, stroke: this.strokeStyle }); };
  const { layout: lay } = drawHeatmap(ctx, { ...grid, view }, { width: 400, height: 200, tau: 0.5, delta: 0.015 });
  const x0 = lay.x0 + 2 * lay.cw, y0 = lay.y0;
  const inCell = (o) => o.x >= x0 && o.x < x0 + lay.cw && o.y >= y0 && o.y < y0 + lay.ch;
  assert.ok(ops.some((o) => o.op === "rect" && o.fill === PALETTE.width && inCell(o)), "width bar: it ran");
  assert.ok(!ops.some((o) => o.op === "rect" && o.fill === PALETTE.reuse && inCell(o)), "no reuse dot");
  assert.equal(strokes.filter((o) => o.stroke === PALETTE.nocache && inCell(o)).length, 1, "one ring in the cell");
  assert.ok(ops.some((o) => o.op === "text" && o.t.startsWith("ring: ran")));
  const plain = recorder();
  drawHeatmap(plain.ctx, grid, { width: 400, height: 200, tau: 0.5, delta: 0.015 });
  assert.ok(!plain.ops.some((o) => o.op === "text" && o.t.startsWith("ring")), "no ring legend without such runs");
});

test("the summary line shows the cache peak and the share run for want of cache", () => {
  const s = { skipped: 0.2, reused: 0.1, mean_width: 1, executed_fraction: 0.7, estimated_speedup: 1.4,
              wall_time_s: 2, cache_bytes_peak: 3 * 2 ** 20, no_cache: 0.05 };
  assert.match(summaryText(s, false), /cache peak 3\.0 MiB \(no cache 5%\)$/);
  assert.match(summaryText({ ...s, no_cache: 0 }, false), /cache peak 3\.0 MiB$/);
  assert.ok(!summaryText(s, true).includes("cache peak"), "a what-if says nothing of the cache it did not hold");
});

test("legend: the ramp, tau marked where it lies, the estimate flagged", () => {
  const { ctx, ops } = recorder();
  const { layout: lay } = drawHeatmap(ctx, grid, { width: 400, height: 200, tau: 0.25, delta: 0.1, estimate: true });
  const legend = ops.filter((o) => o.op === "rect" && o.y === lay.legendY - 3 && o.fill === PALETTE.tau);
  assert.equal(legend.length, 1);
  assert.equal(legend[0].x, lay.x0 + Math.round(0.25 * 159) - 1);
  assert.ok(ops.some((o) => o.op === "text" && o.t.startsWith("ESTIMATE")));
  assert.ok(ops.some((o) => o.op === "stroke"), "dashed frame around a what-if picture");
  assert.ok(ops.some((o) => o.op === "text" && o.t === "tau 0.25"));
});

test("legend on a narrow widget: the closing label stays inside; a dragged tau is shown rounded", () => {
  const { ctx, ops } = recorder();
  const width = 259;  // the canvas width the Apply node gives the widget at its default size
  drawHeatmap(ctx, grid, { width, height: 200, tau: 0.7311475409836066, delta: 0.015, estimate: false });
  const one = ops.find((o) => o.op === "text" && o.t === "1");
  assert.ok(one && one.x + 7 <= width, `the ramp's "1" starts at ${one?.x}, past the ${width} px canvas`);
  assert.ok(ops.some((o) => o.op === "text" && o.t === "tau 0.731"), ops.filter((o) => o.op === "text").map((o) => o.t));
});

test("ramp ends on the palette's first and last stops", () => {
  assert.equal(ramp(0, PALETTE), "rgb(68,1,84)");
  assert.equal(ramp(1, PALETTE), "rgb(253,231,37)");
  assert.equal(ramp(-3, PALETTE), ramp(0, PALETTE));
});

test("cellAt inverts the layout", () => {
  const lay = layout(400, 200, 2, 3);
  assert.deepEqual(cellAt(lay, lay.x0 + lay.cw * 2 + 1, lay.y0 + lay.ch + 1), { block: 1, step: 2 });
  assert.equal(cellAt(lay, 2, 2), null);
});

test("live columns fill an empty payload step by step", () => {
  const pl = emptyPayload({ blocks: grid.blocks, num_steps: 3, widths: [0.25, 0.5, 0.75, 1], config: {}, palette: PALETTE });
  mergeStep(pl, { step: 1, sigma: 0.5, cache: true, views: [{ stream: "cond", sample: 0, p: [0.9, 0.1],
    action: [RUN, SKIP], width: [1, 1], reuse: [0, 0] }] });
  assert.equal(pl.views.length, 1);
  assert.deepEqual(pl.views[0].p, [[null, 0.9, null], [null, 0.1, null]]);
  assert.equal(pl.steps[1].cache, true);
  const { ctx } = recorder();
  assert.equal(drawHeatmap(ctx, { ...pl, view: pl.views[0] }, { width: 300, height: 100, tau: 0.5, delta: 0 }).cells, 2);
});

test("live views come in Python's order: cond first", () => {
  const pl = emptyPayload({ blocks: grid.blocks, num_steps: 1, widths: [1], config: {}, palette: PALETTE });
  const col = (stream) => ({ stream, sample: 0, p: [0.9, 0.1], action: [RUN, SKIP], width: [1, 1], reuse: [0, 0] });
  mergeStep(pl, { step: 0, sigma: 1, cache: false, views: [col("uncond"), col("cond")] });
  assert.deepEqual(pl.views.map((v) => v.stream), ["cond", "uncond"]);
});

test("what-if: knobs change decisions; the run's own knobs give back the run", () => {
  const pl = { views: [grid.view], steps: grid.steps, widths: [0.25, 0.5, 0.75, 1],
               costs: [[1, 2, 3, 4], [1, 2, 3, 4]], config: { tau: 0.5, delta: 0.015, max_reuse: 10 } };
  const same = whatIf(pl, 0, 0.5, 0.015, 10);
  assert.deepEqual(same.action, grid.view.action);
  const low = whatIf(pl, 0, 0.1, 0.015, 10);
  assert.equal(low.skipped, 0);
  assert.ok(low.executed_fraction > same.executed_fraction);
  assert.equal(whatIf(pl, 0, 0.5, 0, 10).reused, 0);
  assert.match(summaryText(same, true), /^what-if estimate: /);
  const all = whatIf(pl, 0, 1.0, 0, 10);  // every block skipped: no division by zero in the summary
  assert.equal(all.skipped, 1);
  assert.match(summaryText(all, true), /est\. ∞ \(everything skipped\)/);
});

test("what-if equals Python's on a recorded run", { skip: !process.env.ELASTIC_FIXTURE && "no ELASTIC_FIXTURE" }, () => {
  const fx = JSON.parse(readFileSync(process.env.ELASTIC_FIXTURE, "utf8"));
  for (const c of fx.cases) {
    const got = whatIf(fx.payload, c.view, c.tau, c.delta, c.max_reuse);
    assert.deepEqual(got.action, c.expected.action, JSON.stringify(c));
    for (const k of ["skipped", "reused", "executed_fraction"]) assert.ok(Math.abs(got[k] - c.expected[k]) < 1e-12, k);
  }
});

test("decide() is Python's Policy.decide", { skip: !process.env.ELASTIC_FIXTURE && "no ELASTIC_FIXTURE" }, () => {
  const fx = JSON.parse(readFileSync(process.env.ELASTIC_FIXTURE, "utf8"));
  assert.ok(fx.decide.length > 100);
  for (const c of fx.decide) assert.deepEqual(decide(c.config, c.p, c.width, c.caching, c.reuses), c.expected, JSON.stringify(c));
});

test("the canvas grows with the block count: every row keeps at least 4 px", () => {
  for (const n of [4, 24, 57, 60]) {
    const lay = layout(360, canvasHeightFor(n), n, 28);
    assert.ok(lay.ch >= 4, `${n} blocks: rows of ${lay.ch} px`);
    assert.ok(lay.legendY + 54 - 8 <= canvasHeightFor(n), `${n} blocks: the legend fits`);
  }
  assert.ok(canvasHeightFor(60) > canvasHeightFor(4));
});
