// Elastic DiT heatmap: pure drawing and data functions (no DOM, no ComfyUI), tested under `node --test`.
// Python computes the payload (elastic_core/heatmap.py); this file only draws it, merges live step
// columns into it, and replays Algorithm 1 at other knob values for the what-if preview.

export const SKIP = 0, REUSE = 1, RUN = 2, NOCACHE = 3;  // NOCACHE: ran, the cache budget had not kept the residual
const LABEL_W = 92, TOP = 4, LEGEND_H = 54;
const LEGEND_END_W = 12;  // the ramp's closing "1" label, 10px font, and a margin
const MIN_ROW_PX = 4;  // a block row never gets thinner than this (57 Flux blocks, 60 Qwen-Image blocks)

// The canvas height (CSS pixels) that gives every one of nBlocks rows at least MIN_ROW_PX.
export function canvasHeightFor(nBlocks) {
  return TOP + LEGEND_H + MIN_ROW_PX * Math.max(nBlocks, 1) + 8;
}

function hex(c) {
  return [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));
}

// Gate probability -> colour on the payload's ramp (the same stops the stats image uses).
export function ramp(p, palette) {
  const stops = palette.ramp.map(hex);
  const x = Math.min(Math.max(p, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

export function layout(width, height, nBlocks, nSteps) {
  const gridW = Math.max(width - LABEL_W - 4, nSteps);
  const gridH = Math.max(height - TOP - LEGEND_H, nBlocks);
  const cw = Math.max(1, Math.floor(gridW / Math.max(nSteps, 1)));
  const ch = Math.max(1, Math.floor(gridH / Math.max(nBlocks, 1)));
  return { x0: LABEL_W, y0: TOP, cw, ch, nBlocks, nSteps, width, height, legendY: TOP + ch * nBlocks + 8 };
}

// Which cell lies under canvas point (x, y): {block, step} or null.
export function cellAt(lay, x, y) {
  const step = Math.floor((x - lay.x0) / lay.cw);
  const block = Math.floor((y - lay.y0) / lay.ch);
  if (x < lay.x0 || y < lay.y0 || step >= lay.nSteps || block >= lay.nBlocks) return null;
  return { block, step };
}

function drawCell(ctx, lay, b, s, view, palette) {
  const x = lay.x0 + s * lay.cw, y = lay.y0 + b * lay.ch;
  const w = Math.max(lay.cw - 1, 1), h = Math.max(lay.ch - 1, 1);
  const p = view.p[b][s];
  const a = view.action[b][s];
  const unreached = (p === null || p === undefined) && a === SKIP;  // the step never reached the model
  if ((p === null || p === undefined) && !unreached) {
    ctx.fillStyle = palette.empty;
    ctx.fillRect(x, y, w, h);
    return false;
  }
  ctx.fillStyle = unreached ? palette.empty : ramp(p, palette);
  ctx.fillRect(x, y, w, h);
  if (a === SKIP) {
    ctx.globalAlpha = palette.skip_alpha;
    ctx.fillStyle = palette.skip;
    ctx.fillRect(x, y, w, h);
    ctx.globalAlpha = 1;
  } else if (a === REUSE) {
    ctx.fillStyle = palette.reuse;
    const d = Math.max(1, Math.min(w, h) / 3);
    ctx.fillRect(x + w / 2 - d / 2, y + h / 2 - d / 2, d, d);
  } else if (a === RUN || a === NOCACHE) {
    ctx.fillStyle = palette.width;
    ctx.fillRect(x, y + h - Math.max(1, h / 5), Math.max(1, w * (view.width[b][s] ?? 1)), Math.max(1, h / 5));
  }
  if (a === NOCACHE) {  // a ring where the reuse dot would have been
    ctx.strokeStyle = palette.nocache ?? palette.tau;
    const d = Math.max(2, Math.min(w, h) / 2);
    ctx.strokeRect(x + w / 2 - d / 2, y + h / 2 - d / 2, d, d);
  }
  return true;
}

function drawLabels(ctx, lay, blocks, palette) {
  ctx.fillStyle = palette.text;
  ctx.font = "10px sans-serif";
  const every = Math.max(1, Math.ceil(11 / lay.ch));
  let group = null;
  blocks.forEach((blk, b) => {
    const y = lay.y0 + b * lay.ch;
    if (blk.group !== group && group !== null) {  // a line between double and single blocks
      ctx.fillStyle = palette.tau;
      ctx.fillRect(lay.x0 - 4, y - 1, lay.cw * lay.nSteps + 4, 1);
      ctx.fillStyle = palette.text;
    }
    group = blk.group;
    if (b % every === 0) ctx.fillText(blk.name.slice(-15), 2, y + Math.min(lay.ch, 10));
  });
}

function drawLegend(ctx, lay, opts, palette) {
  const y = lay.legendY, w = Math.min(160, lay.width - lay.x0 - LEGEND_END_W);  // room for the "1" after the ramp
  for (let i = 0; i < w; i++) {
    ctx.fillStyle = ramp(i / (w - 1), palette);
    ctx.fillRect(lay.x0 + i, y, 1, 8);
  }
  ctx.fillStyle = palette.tau;  // tau, and the reuse band [tau, tau + delta]
  ctx.fillRect(lay.x0 + Math.round(opts.tau * (w - 1)) - 1, y - 3, 2, 14);
  ctx.globalAlpha = 0.35;
  ctx.fillRect(lay.x0 + opts.tau * (w - 1), y, Math.max(1, opts.delta * (w - 1)), 8);
  ctx.globalAlpha = 1;
  ctx.fillStyle = palette.text;
  ctx.font = "10px sans-serif";
  ctx.fillText("p: 0", 2, y + 8);
  ctx.fillText("1", lay.x0 + w + 3, y + 8);
  ctx.fillText(`tau ${Number(opts.tau.toFixed(3))}`, lay.x0, y + 20);  // a dragged slider gives any float
  ctx.fillText("dark: skipped · dot: reused · bar: MLP width", 2, y + 32);
  if (opts.estimate) {
    ctx.fillStyle = palette.tau;
    ctx.fillText("ESTIMATE (what-if from recorded p)", 2, y + 44);
  } else if (opts.nocache) {  // only a run under a cache budget has these
    ctx.fillText("ring: ran, the cache budget kept no residual", 2, y + 44);
  }
}

// Draw one view of a heatmap. grid: {blocks, steps, view: {p, action, width}, palette}.
// opts: {width, height, tau, delta, estimate}. Returns {cells drawn, layout}.
export function drawHeatmap(ctx, grid, opts) {
  const { blocks, view, palette } = grid;
  const nSteps = grid.steps.length;
  const lay = layout(opts.width, opts.height, blocks.length, nSteps);
  ctx.fillStyle = palette.grid;
  ctx.fillRect(0, 0, opts.width, opts.height);
  let cells = 0, nocache = 0;
  for (let b = 0; b < blocks.length; b++) {
    for (let s = 0; s < nSteps; s++) {
      if (drawCell(ctx, lay, b, s, view, palette)) cells++;
      if (view.action[b][s] === NOCACHE) nocache++;
    }
  }
  drawLabels(ctx, lay, blocks, palette);
  drawLegend(ctx, lay, { ...opts, nocache }, palette);
  if (opts.estimate) {  // a dashed frame marks a what-if picture
    ctx.strokeStyle = palette.tau;
    ctx.setLineDash?.([4, 3]);
    ctx.strokeRect(lay.x0 - 1, lay.y0 - 1, lay.cw * nSteps + 1, lay.ch * blocks.length + 1);
    ctx.setLineDash?.([]);
  }
  return { cells, layout: lay };
}

// Policy.decide of elastic_core/policy.py, line for line: skip below tau; reuse in [tau, tau + delta]
// while caching and a residual is cached that was reused fewer than K times; otherwise run.
// reuses: null when nothing usable is cached.
export function decide(cfg, p, width, caching, reuses) {
  const w = (cfg.width ?? true) ? width : 1.0;
  if ((cfg.skip ?? true) && p < cfg.tau) return { action: SKIP, width: w };
  if (caching && reuses !== null && cfg.tau <= p && p <= cfg.tau + cfg.delta && reuses < cfg.max_reuse)
    return { action: REUSE, width: w };
  return { action: RUN, width: w };
}

// Algorithm 1 replayed on one view's recorded p at other thresholds (mirrors elastic_core.heatmap.what_if
// and policy.replay): decisions, shares, and executed compute with the routers' cost included.
export function whatIf(payload, viewIndex, tau, delta, maxReuse) {
  const view = payload.views[viewIndex], widths = payload.widths;
  const cfg = { ...payload.config, tau, delta, max_reuse: maxReuse };
  const action = view.p.map((row) => row.map(() => null));
  let spent = 0, dense = 0, n = 0;
  const counts = [0, 0, 0];
  for (let b = 0; b < view.p.length; b++) {
    let reuses = null;
    const costs = payload.costs[b], router = payload.router_costs?.[b] ?? 0;
    for (let s = 0; s < payload.steps.length; s++) {
      const p = view.p[b][s];
      if ((p === null || p === undefined) && view.action[b][s] === SKIP) {  // never reached the model
        action[b][s] = SKIP;
        counts[SKIP]++; n++;
        dense += costs[costs.length - 1];
        continue;
      }
      if (p === null || p === undefined) continue;
      const caching = (cfg.cache ?? true) && payload.steps[s].cache;
      const d = decide(cfg, p, view.width[b][s], caching, reuses);
      if (d.action === REUSE) reuses++;
      else if (d.action === RUN && caching) reuses = 0;
      action[b][s] = d.action;
      counts[d.action]++; n++;
      dense += costs[costs.length - 1];
      spent += router;
      if (d.action === RUN) {
        const i = widths.indexOf(d.width);
        spent += costs[i >= 0 ? i : costs.length - 1];
      }
    }
  }
  const frac = dense ? spent / dense : 1;
  return { action, skipped: counts[SKIP] / Math.max(n, 1), reused: counts[REUSE] / Math.max(n, 1),
           executed_fraction: frac, estimated_speedup: frac ? 1 / frac : Infinity };
}

// Views in the order Python's payload has them: cond first, then by stream name, then by sample.
function viewOrder(a, b) {
  const ka = [a.stream !== "cond", a.stream, a.sample], kb = [b.stream !== "cond", b.stream, b.sample];
  for (let i = 0; i < 3; i++) if (ka[i] !== kb[i]) return ka[i] < kb[i] ? -1 : 1;
  return 0;
}

// A payload-shaped object that live step columns fill in while sampling runs.
export function emptyPayload(header) {
  return { ...header, live: true, views: [], costs: null, summary: null,
           steps: Array.from({ length: header.num_steps }, (_, i) => ({ index: i, sigma: null, cache: false })) };
}

export function mergeStep(payload, msg) {
  const nB = payload.blocks.length, nS = payload.steps.length;
  if (msg.step >= nS) return payload;
  payload.steps[msg.step] = { index: msg.step, sigma: msg.sigma, cache: msg.cache };
  for (const col of msg.views) {
    let v = payload.views.find((x) => x.stream === col.stream && x.sample === col.sample);
    if (!v) {
      v = { stream: col.stream, sample: col.sample };
      for (const k of ["p", "action", "width", "reuse"]) v[k] = Array.from({ length: nB }, () => Array(nS).fill(null));
      payload.views.push(v);
      payload.views.sort(viewOrder);
    }
    for (const k of ["p", "action", "width", "reuse"]) col[k].forEach((x, b) => { v[k][b][msg.step] = x; });
  }
  return payload;
}

export function summaryText(s, estimate) {
  if (!s) return "";
  const pct = (x) => `${Math.round(x * 100)}%`;
  let t = `skipped ${pct(s.skipped)} · reused ${pct(s.reused)}`;
  if (s.mean_width !== undefined) t += ` · mean width ${s.mean_width.toFixed(2)}`;
  const speed = Number.isFinite(s.estimated_speedup) ? `${s.estimated_speedup.toFixed(2)}x` : "∞ (everything skipped)";
  t += ` · compute ${pct(s.executed_fraction)} · est. ${speed}`;
  if (s.wall_time_s !== undefined && !estimate) t += ` · measured ${s.wall_time_s.toFixed(1)} s`;
  if (s.cache_bytes_peak !== undefined && !estimate) {
    t += ` · cache peak ${(s.cache_bytes_peak / 2 ** 20).toFixed(1)} MiB`;
    if (s.no_cache) t += ` (no cache ${pct(s.no_cache)})`;
  }
  return (estimate ? "what-if estimate: " : "") + t;
}
