// Elastic DiT: the gate heatmap on the Apply Elastic DiT node. Fills in live while sampling runs
// (server events elastic_dit.start / .step / .done), keeps the final record, and re-colours the last run
// as a what-if estimate when tau, delta or max_reuse move. Sliders a preset overrides are marked
// (presets.js). Nothing here is saved with the workflow.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { canvasHeightFor, cellAt, drawHeatmap, emptyPayload, mergeStep, summaryText, whatIf } from "./heatmap.js";
import { markPreset, presetTable } from "./presets.js";

const NODE_TYPE = "ElasticDiTApply";
const KNOBS = ["tau", "delta", "max_reuse"];  // what the what-if replays
const PRESET_KNOBS = [...KNOBS, "cache_start_percent", "cache_end_percent"];  // what a preset may override
const ACTION_NAMES = ["skipped", "reused", "run", "run (no cache: the budget kept no residual)"];  // by action code
const HEIGHT = 272;  // the widget's least height; taller when a run has many blocks (minHeight below)
const BAR_H = 22;  // the selector / summary line above the canvas

function el(tag, style, text) {
  const e = document.createElement(tag);
  Object.assign(e.style, style || {});
  if (text) e.textContent = text;
  return e;
}

function createView() {
  const root = el("div", { position: "relative", width: "100%", height: "100%", font: "11px sans-serif",
                           color: "#ddd", display: "flex", flexDirection: "column" });
  root.className = "elastic-dit-heatmap";
  const bar = el("div", { display: "flex", gap: "6px", alignItems: "center", minHeight: "18px", flexWrap: "wrap" });
  const select = el("select", { fontSize: "11px", flex: "0 0 auto" });  // sized to its longest label
  const summary = el("span", { whiteSpace: "normal", lineHeight: "1.2", flex: "1 1 160px" },
                     "run the graph to see what the routers decide");
  const canvas = el("canvas", { flex: "1", width: "100%", minHeight: "0" });
  const tip = el("div", { position: "absolute", display: "none", pointerEvents: "none", background: "#000c",
                          padding: "3px 5px", borderRadius: "3px", whiteSpace: "pre" });
  bar.append(select, summary);
  root.append(bar, canvas, tip);
  return { root, select, summary, canvas, tip };
}

const viewLabel = (v) => `${v.stream} #${v.sample}`;

class HeatmapWidget {
  constructor(node) {
    this.node = node;
    this.ui = createView();
    this.payload = null;  // what is drawn: a live run filling in, or the last run's final payload
    this.view = 0;
    this.estimate = null;  // a what-if replay of the last run, while the knobs differ from what ran
    this.drawn = null;
    this.scale = null;
    this.presetEntry = null;  // what the node's preset sets (from the server's table)
    const widget = node.addDOMWidget("elastic_heatmap", "elastic_heatmap", this.ui.root,
                                     { serialize: false, hideOnZoom: false, getMinHeight: () => this.minHeight() });
    widget.serialize = false;  // older frontends read the flag from the widget itself
    this.grow(true);  // the node was sized before this widget existed
    this.listen();
  }

  knob(name) {
    return this.node.widgets?.find((w) => w.name === name)?.value;
  }

  minHeight() {
    return Math.max(HEIGHT, BAR_H + canvasHeightFor(this.payload?.blocks?.length ?? 0));
  }

  grow(both = false) {  // a run with more blocks than fit: make the node tall enough for 4 px rows
    const fit = this.node.computeSize?.();
    if (!fit) return;
    if (both) this.node.setSize([Math.max(this.node.size[0], fit[0]), Math.max(this.node.size[1], fit[1])]);
    else if (this.node.size[1] < fit[1]) this.node.setSize([this.node.size[0], fit[1]]);
    app.graph?.setDirtyCanvas?.(true, true);
  }

  // Sharp at any screen density and canvas zoom: the backing store has device pixels, the drawing
  // (and cellAt, which reads mouse offsets) works in CSS pixels.
  pixelScale() {
    return (window.devicePixelRatio || 1) * Math.max(app.canvas?.ds?.scale ?? 1, 1);
  }

  currentView() {
    return this.payload.views[Math.min(this.view, this.payload.views.length - 1)];
  }

  redraw() {
    const { ui, payload: pl, estimate: est } = this;
    const w = Math.max(ui.canvas.clientWidth || 300, 120), h = Math.max(ui.canvas.clientHeight || 200, 60);
    const k = (this.scale = this.pixelScale());
    ui.canvas.width = Math.round(w * k);
    ui.canvas.height = Math.round(h * k);
    ui.canvas.dataset.scale = String(k);
    if (!pl || !pl.views.length) return;
    const view = this.currentView();
    const tau = est ? this.knob("tau") : pl.config.tau, delta = est ? this.knob("delta") : pl.config.delta;
    const grid = { blocks: pl.blocks, steps: pl.steps, palette: pl.palette,
                   view: est ? { ...view, action: est.action } : view };
    const ctx = ui.canvas.getContext("2d");
    ctx.setTransform(k, 0, 0, k, 0, 0);
    this.drawn = drawHeatmap(ctx, grid, { width: w, height: h, tau, delta, estimate: !!est });
    ui.canvas.dataset.cells = String(this.drawn.cells);
    ui.canvas.dataset.estimate = est ? "1" : "0";
    ui.summary.textContent = pl.live ? `sampling… step ${pl.steps.filter((s) => s.sigma !== null).length}/${pl.steps.length}`
                                     : summaryText(est || pl.summary, !!est);
    ui.root.dataset.summary = ui.summary.textContent;
  }

  fillViews() {  // one option per (stream, sample); rebuilt when the views' order or count changes
    const { select } = this.ui;
    const labels = this.payload.views.map(viewLabel);
    const shown = [...select.options].map((o) => o.textContent);
    if (shown.join("|") === labels.join("|")) return;
    const current = shown[this.view];
    select.replaceChildren(...labels.map((label, i) => {
      const opt = el("option", null, label);
      opt.value = String(i);
      return opt;
    }));
    this.view = Math.max(labels.indexOf(current), 0);
    select.value = String(this.view);
  }

  // The last run re-decided at the knobs' values; none while they equal what ran, or while the preset
  // takes them from the router file (the sliders then do not say what would run).
  whatIfNow() {
    const pl = this.payload;
    if (!pl || pl.live || !pl.costs) return;
    const tau = this.knob("tau"), delta = this.knob("delta"), k = this.knob("max_reuse");
    const same = tau === pl.config.tau && delta === pl.config.delta && k === pl.config.max_reuse;
    const fromFile = (this.presetEntry?.from_file ?? []).length > 0;
    this.estimate = same || fromFile ? null : whatIf(pl, Math.min(this.view, pl.views.length - 1), tau, delta, k);
    this.redraw();
  }

  async markPreset() {
    const table = await presetTable();
    this.presetEntry = table[this.knob("preset") ?? "sliders"] ?? null;
    markPreset(this.node, this.presetEntry, PRESET_KNOBS);
    this.whatIfNow();
  }

  hover(e) {
    const { payload: pl, ui } = this, lay = this.drawn?.layout;
    const c = lay && cellAt(lay, e.offsetX, e.offsetY);
    const v = c && this.currentView();
    if (c && v.p[c.block][c.step] === null && v.action[c.block][c.step] === 0) {  // SKIP with no router call
      ui.tip.textContent = `${pl.blocks[c.block].name} · step ${c.step}: never reached the model (a step cache in front answered)`;
      Object.assign(ui.tip.style, { display: "block", left: `${e.offsetX + 12}px`, top: `${e.offsetY + 20}px` });
      return;
    }
    if (!c || v.p[c.block][c.step] === null) { ui.tip.style.display = "none"; return; }
    const a = (this.estimate ? this.estimate.action : v.action)[c.block][c.step];
    const sigma = pl.steps[c.step].sigma;
    ui.tip.textContent = `${pl.blocks[c.block].name} · step ${c.step}${sigma !== null ? ` (sigma ${sigma.toFixed(3)})` : ""}\n` +
      `p ${v.p[c.block][c.step].toFixed(3)} · ${ACTION_NAMES[a]}${this.estimate ? " (estimate)" : ""} · width ${v.width[c.block][c.step]}` +
      ` · reuse count ${v.reuse[c.block][c.step]}`;
    Object.assign(ui.tip.style, { display: "block", left: `${e.offsetX + 12}px`, top: `${e.offsetY + 20}px` });
  }

  onServer(kind, d) {
    if (kind === "start") { this.payload = emptyPayload(d); this.estimate = null; this.grow(); }
    else if (kind === "step") { if (this.payload?.live) { mergeStep(this.payload, d); this.fillViews(); } }
    else { this.payload = d; this.fillViews(); this.grow(); this.whatIfNow(); }
    this.redraw();
  }

  chainCallback(name, after) {  // chained, never replaced: other extensions may hook the same widget
    const w = this.node.widgets?.find((x) => x.name === name);
    if (!w) return;
    const orig = w.callback;
    w.callback = function (...args) {
      const r = orig?.apply(this, args);
      after();
      return r;
    };
  }

  listen() {
    const { ui, node } = this;
    ui.select.addEventListener("change", () => { this.view = Number(ui.select.value); this.whatIfNow(); this.redraw(); });
    for (const name of KNOBS) this.chainCallback(name, () => this.whatIfNow());
    this.chainCallback("preset", () => this.markPreset());
    ui.canvas.addEventListener("mousemove", (e) => this.hover(e));
    ui.canvas.addEventListener("mouseleave", () => { ui.tip.style.display = "none"; });
    const mine = (detail) => detail && String(detail.node).split(":").pop() === String(node.id);
    const listeners = ["start", "step", "done"].map((kind) => {
      const l = (e) => { if (mine(e.detail)) this.onServer(kind, e.detail); };
      api.addEventListener(`elastic_dit.${kind}`, l);
      return [`elastic_dit.${kind}`, l];
    });
    chainMethod(node, "onRemoved", () => { for (const [ev, l] of listeners) api.removeEventListener(ev, l); });
    chainMethod(node, "onConfigure", () => this.markPreset());  // a loaded workflow's preset
    // zooming the canvas resizes nothing: redraw when the scale moved
    chainMethod(node, "onDrawForeground", () => { if (this.payload && this.scale !== this.pixelScale()) this.redraw(); });
    if (typeof ResizeObserver !== "undefined") new ResizeObserver(() => this.redraw()).observe(ui.canvas);
  }
}

function chainMethod(obj, name, after) {
  const orig = obj[name];
  obj[name] = function (...args) {
    const r = orig?.apply(this, args);
    after();
    return r;
  };
}

app.registerExtension({
  name: "elastic_dit.heatmap",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      // TEST HOOK: the browser tests read the widget's state here (payload, drawn, view); nothing else does.
      this.elasticDiT = new HeatmapWidget(this);
      this.elasticDiT.markPreset();
      return r;
    };
  },
});
