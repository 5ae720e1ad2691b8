// Elastic DiT: the gate heatmap on the Apply Elastic DiT node. Fills in live while sampling runs
// (server events elastic_dit.start / .step / .done), keeps the final record, and re-colours the last run
// as a what-if estimate when tau, delta or max_reuse move. Nothing here is saved with the workflow.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { canvasHeightFor, cellAt, drawHeatmap, emptyPayload, mergeStep, summaryText, whatIf } from "./heatmap.js";

const NODE_TYPE = "ElasticDiTApply";
const KNOBS = ["tau", "delta", "max_reuse"];
const ACTION_NAMES = ["skipped", "reused", "run"];
const HEIGHT = 272;  // the widget's least height; taller when a run has many blocks (minHeight below)
const BAR_H = 22;  // the selector / summary line above the canvas

function el(tag, style, text) {
  const e = document.createElement(tag);
  Object.assign(e.style, style || {});
  if (text) e.textContent = text;
  return e;
}

function knob(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

function createView(node) {
  const root = el("div", { position: "relative", width: "100%", height: "100%", font: "11px sans-serif",
                           color: "#ddd", display: "flex", flexDirection: "column" });
  root.className = "elastic-dit-heatmap";
  const bar = el("div", { display: "flex", gap: "6px", alignItems: "center", minHeight: "18px", flexWrap: "wrap" });
  const select = el("select", { fontSize: "11px", maxWidth: "40%" });
  const summary = el("span", { whiteSpace: "normal", lineHeight: "1.2" },
                     "run the graph to see what the routers decide");
  const canvas = el("canvas", { flex: "1", width: "100%", minHeight: "0" });
  const tip = el("div", { position: "absolute", display: "none", pointerEvents: "none", background: "#000c",
                          padding: "3px 5px", borderRadius: "3px", whiteSpace: "pre" });
  bar.append(select, summary);
  root.append(bar, canvas, tip);
  return { root, select, summary, canvas, tip };
}

function setup(node) {
  const ui = createView(node);
  const state = { payload: null, view: 0, estimate: null, drawn: null };
  node.elasticDiT = state;  // read by the browser tests

  const minHeight = () => Math.max(HEIGHT, BAR_H + canvasHeightFor(state.payload?.blocks?.length ?? 0));
  const widget = node.addDOMWidget("elastic_heatmap", "elastic_heatmap", ui.root,
                                   { serialize: false, hideOnZoom: false, getMinHeight: minHeight });
  widget.serialize = false;  // older frontends read the flag from the widget itself
  // The node was sized before this widget existed: grow it so the heatmap sits inside the node.
  const fit = node.computeSize?.();
  if (fit) node.setSize([Math.max(node.size[0], fit[0]), Math.max(node.size[1], fit[1])]);

  function grow() {  // a run with more blocks than fit: make the node tall enough for 4 px rows
    const fit = node.computeSize?.();
    if (fit && node.size[1] < fit[1]) {
      node.setSize([node.size[0], fit[1]]);
      app.graph?.setDirtyCanvas?.(true, true);
    }
  }

  // Sharp at any screen density and canvas zoom: the backing store has device pixels, the drawing
  // (and cellAt, which reads mouse offsets) works in CSS pixels.
  const pixelScale = () => (window.devicePixelRatio || 1) * Math.max(app.canvas?.ds?.scale ?? 1, 1);

  function redraw() {
    const pl = state.payload;
    const w = Math.max(ui.canvas.clientWidth || 300, 120), h = Math.max(ui.canvas.clientHeight || 200, 60);
    const k = pixelScale();
    state.scale = k;
    ui.canvas.width = Math.round(w * k);
    ui.canvas.height = Math.round(h * k);
    ui.canvas.dataset.scale = String(k);
    if (!pl || !pl.views.length) return;
    const view = pl.views[Math.min(state.view, pl.views.length - 1)];
    const est = state.estimate;
    const tau = est ? knob(node, "tau") : pl.config.tau, delta = est ? knob(node, "delta") : pl.config.delta;
    const grid = { blocks: pl.blocks, steps: pl.steps, palette: pl.palette,
                   view: est ? { ...view, action: est.action } : view };
    const ctx = ui.canvas.getContext("2d");
    ctx.setTransform(k, 0, 0, k, 0, 0);
    state.drawn = drawHeatmap(ctx, grid, { width: w, height: h, tau, delta, estimate: !!est });
    ui.canvas.dataset.cells = String(state.drawn.cells);
    ui.canvas.dataset.estimate = est ? "1" : "0";
    ui.summary.textContent = pl.live ? `sampling… step ${pl.steps.filter((s) => s.sigma !== null).length}/${pl.steps.length}`
                                     : summaryText(est || pl.summary, !!est);
    ui.root.dataset.summary = ui.summary.textContent;
  }

  function fillViews() {  // one option per (stream, sample); rebuilt when the views' order or count changes
    const labels = state.payload.views.map((v) => `${v.stream} · sample ${v.sample}`);
    const shown = [...ui.select.options].map((o) => o.textContent);
    if (shown.join("|") === labels.join("|")) return;
    const current = shown[state.view];
    ui.select.replaceChildren(...labels.map((label, i) => {
      const opt = el("option", null, label);
      opt.value = String(i);
      return opt;
    }));
    state.view = Math.max(labels.indexOf(current), 0);
    ui.select.value = String(state.view);
  }

  function whatIfNow() {
    const pl = state.payload;
    if (!pl || pl.live || !pl.costs) return;
    const tau = knob(node, "tau"), delta = knob(node, "delta"), k = knob(node, "max_reuse");
    const same = tau === pl.config.tau && delta === pl.config.delta && k === pl.config.max_reuse;
    state.estimate = same ? null : whatIf(pl, Math.min(state.view, pl.views.length - 1), tau, delta, k);
    redraw();
  }

  ui.select.addEventListener("change", () => { state.view = Number(ui.select.value); whatIfNow(); redraw(); });
  for (const name of KNOBS) {
    const w = node.widgets?.find((x) => x.name === name);
    if (!w) continue;
    const orig = w.callback;
    w.callback = function (...args) {
      const r = orig?.apply(this, args);
      whatIfNow();
      return r;
    };
  }

  ui.canvas.addEventListener("mousemove", (e) => {
    const pl = state.payload, lay = state.drawn?.layout;
    const c = lay && cellAt(lay, e.offsetX, e.offsetY);
    const v = c && pl.views[Math.min(state.view, pl.views.length - 1)];
    if (!c || v.p[c.block][c.step] === null) { ui.tip.style.display = "none"; return; }
    const a = (state.estimate ? state.estimate.action : v.action)[c.block][c.step];
    const sigma = pl.steps[c.step].sigma;
    ui.tip.textContent = `${pl.blocks[c.block].name} · step ${c.step}${sigma !== null ? ` (sigma ${sigma.toFixed(3)})` : ""}\n` +
      `p ${v.p[c.block][c.step].toFixed(3)} · ${ACTION_NAMES[a]}${state.estimate ? " (estimate)" : ""} · width ${v.width[c.block][c.step]}` +
      ` · reuse count ${v.reuse[c.block][c.step]}`;
    Object.assign(ui.tip.style, { display: "block", left: `${e.offsetX + 12}px`, top: `${e.offsetY + 20}px` });
  });
  ui.canvas.addEventListener("mouseleave", () => { ui.tip.style.display = "none"; });

  const mine = (detail) => detail && String(detail.node).split(":").pop() === String(node.id);
  const handlers = {
    "elastic_dit.start": (d) => { state.payload = emptyPayload(d); state.estimate = null; grow(); },
    "elastic_dit.step": (d) => { if (state.payload?.live) { mergeStep(state.payload, d); fillViews(); } },
    "elastic_dit.done": (d) => { state.payload = d; fillViews(); grow(); whatIfNow(); },
  };
  const listeners = Object.entries(handlers).map(([ev, fn]) => {
    const l = (e) => { if (mine(e.detail)) { fn(e.detail); redraw(); } };
    api.addEventListener(ev, l);
    return [ev, l];
  });
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    for (const [ev, l] of listeners) api.removeEventListener(ev, l);
    return onRemoved?.apply(this, arguments);
  };
  if (typeof ResizeObserver !== "undefined") new ResizeObserver(() => redraw()).observe(ui.canvas);
  const onDrawForeground = node.onDrawForeground;
  node.onDrawForeground = function () {  // zooming the canvas resizes nothing: redraw when the scale moved
    if (state.payload && state.scale !== pixelScale()) redraw();
    return onDrawForeground?.apply(this, arguments);
  };
  state.redraw = redraw;
}

app.registerExtension({
  name: "elastic_dit.heatmap",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      setup(this);
      return r;
    };
  },
});
