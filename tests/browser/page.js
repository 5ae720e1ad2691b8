// In-page helpers for tests/browser/test_widget_e2e.py, evaluated once per page as `window.__edt`.
// Works with the ComfyUI frontends 1.27 (ComfyUI v0.3.64), 1.35 (v0.8.0), 1.49 (v0.33.0) and 1.58.
// Node ids: numbers up to 1.35; strings in the live graph from 1.4x on (numbers still in the saved JSON),
// so ids are compared as strings throughout.
(() => {
  // Console warnings and errors raised while the pack's own code is on the stack (a deprecated frontend
  // API it calls warns from inside the frontend, so the message's URL alone would not name the pack).
  const PACK_URL = "/extensions/comfyui-elastic-dit/";
  const fromPack = [];
  for (const level of ["warn", "error"]) {
    const orig = console[level];
    console[level] = function (...args) {
      const stack = new Error().stack || "";
      if (stack.includes(PACK_URL)) {
        fromPack.push({ level, text: args.map((a) => (typeof a === "string" ? a : String(a))).join(" ").slice(0, 500),
                        stack: stack.split("\n").slice(2, 10).join(" | ") });
      }
      return orig.apply(this, args);
    };
  }

  const app = () => window.comfyAPI?.app?.app || window.app;
  const api = () => window.comfyAPI?.api?.api || app().api;
  const nodes = () => app().graph._nodes || app().graph.nodes;
  const byId = (id) => app().graph.getNodeById(id) ?? nodes().find((n) => String(n.id) === String(id));
  const widget = (node, name) => node.widgets?.find((w) => w.name === name);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const frames = (n) => new Promise((r) => { const f = (k) => (k ? requestAnimationFrame(() => f(k - 1)) : r()); f(n); });

  const EVENTS = ["elastic_dit.start", "elastic_dit.step", "elastic_dit.done", "execution_start", "execution_success",
                  "execution_error", "execution_interrupted", "executed"];

  window.__edt = {
    ready() {
      const a = app();
      const ok = !!(a?.graph && window.LiteGraph?.registered_node_types?.ElasticDiTApply &&
                    a.extensions?.some((e) => e.name === "elastic_dit.heatmap") && a.canvas);
      // LiteGraph (frontend 1.4x and later) says each deprecation once per page; from here on, every time, so
      // that the pack's use of one is seen even where the frontend's own code said it first.
      if (ok && "alwaysRepeatWarnings" in window.LiteGraph) window.LiteGraph.alwaysRepeatWarnings = true;
      return ok;
    },

    registered(type) { return !!window.LiteGraph.registered_node_types[type]; },

    fromPack() { return fromPack; },

    frontendVersion() { return window.__COMFYUI_FRONTEND_VERSION__ ?? null; },

    // "Modern Node Design (Nodes 2.0)", the frontend's opt-in DOM rendering of nodes (setting
    // Comfy.VueNodes.Enabled, off by default): switch it as the settings dialog does. null: no such setting.
    async setNodes2(on) {
      const s = app().extensionManager?.setting;
      if (!s?.get || s.get("Comfy.VueNodes.Enabled") === undefined) return null;
      await s.set("Comfy.VueNodes.Enabled", on);
      await sleep(800);
      await frames(4);
      return s.get("Comfy.VueNodes.Enabled");
    },

    // A node drawn by Nodes 2.0: its slider thumbs (screen centres, values) in widget order, and whether the
    // heatmap element sits inside it.
    nodes2Knobs(nodeId) {
      const el = document.querySelector(`[data-node-id="${nodeId}"]`);
      const thumbs = el ? [...el.querySelectorAll("[role=slider]")] : [];
      return { node: !!el, heatmap: !!el?.querySelector("div.elastic-dit-heatmap"),
               sliders: thumbs.map((t) => { const r = t.getBoundingClientRect();
                 return { x: r.left + r.width / 2, y: r.top + r.height / 2, value: Number(t.getAttribute("aria-valuenow")) }; }) };
    },

    // The frontend's own list of model files the graph names but this server lacks (frontend 1.4x and
    // later draw those loaders with a red outline): [{node, widget, name}], or null where it keeps none.
    missingModels() {
      const pinia = document.getElementById("vue-app")?.__vue_app__?.config?.globalProperties?.$pinia;
      const store = pinia?._s?.get?.("missingModel");
      if (!store) return null;
      return (store.missingModelCandidates ?? []).map((c) => ({ node: String(c.nodeId), widget: c.widgetName, name: c.name }));
    },

    // Load a workflow file the way a drop does (app.handleFile), else through loadGraphData.
    async loadWorkflow(text, name) {
      const a = app();
      if (typeof a.handleFile === "function") {
        await a.handleFile(new File([text], name, { type: "application/json" }));
      } else {
        await a.loadGraphData(JSON.parse(text), true, true, name);
      }
      // The drop opens the file in a tab of its own; wait until that graph is the one shown (a template the
      // frontend opens at start-up may still be arriving), then until the missing-model flags have settled.
      const want = JSON.parse(text).nodes.map((n) => String(n.id)).sort().join(",");
      const shown = () => nodes().map((n) => String(n.id)).sort().join(",");
      const settled = () => {
        const mm = this.missingModels();
        if (mm === null) return true;
        const listed = new Set(mm.map((m) => m.node));
        return nodes().every((n) => !listed.has(String(n.id)) || n.has_errors);
      };
      for (let t0 = performance.now(); performance.now() - t0 < 10_000 && !(shown() === want && settled());) await sleep(100);
      await sleep(700);
      await frames(3);
      const choices = (w) => { const v = w.options?.values; return Array.isArray(v) ? v : typeof v === "function" ? v() : null; };
      const g = nodes().map((n) => ({
        id: String(n.id), type: n.type, registered: !!window.LiteGraph.registered_node_types[n.type],
        has_errors: !!n.has_errors,
        // combo widgets whose value is not among this server's choices: a model file that is not here
        missingFiles: (n.widgets || []).filter((w) => w.type === "combo" && typeof w.value === "string" &&
                                                  Array.isArray(choices(w)) && !choices(w).includes(w.value))
                                       .map((w) => [w.name, w.value]),
        widgets: (n.widgets || []).filter((w) => w.serialize !== false).map((w) => ({ name: w.name, type: w.type, value: w.value })),
        serialized: n.type.startsWith("ElasticDiT") ? n.serialize().widgets_values : null,
      }));
      const dialogs = [...document.querySelectorAll(".p-dialog, [role=dialog]")]
        .filter((d) => d.offsetParent !== null).map((d) => d.innerText.slice(0, 500));
      return { nodes: g, dialogs, shownIsFile: shown() === want, missingModels: this.missingModels() };
    },

    async closeDialogs() {
      for (const b of document.querySelectorAll(".p-dialog .p-dialog-close-button, .p-dialog-header-close")) b.click();
      await sleep(300);
      return [...document.querySelectorAll(".p-dialog, [role=dialog]")].filter((d) => d.offsetParent !== null).length;
    },

    firstOfType(type) { const n = nodes().find((x) => x.type === type); return n ? String(n.id) : null; },

    // The end-to-end graph, built in the UI as a user would (LiteGraph nodes, links, widget values).
    async buildGraph(opts) {
      const a = app(), LG = window.LiteGraph;
      const cmd = a.extensionManager?.command;  // a new workflow tab, as a user starts one; else clear this one
      if (cmd?.commands?.some?.((c) => c.id === "Comfy.NewBlankWorkflow")) {
        await cmd.execute("Comfy.NewBlankWorkflow");
        await sleep(300);
      }
      a.graph.clear();
      const mk = (type, pos) => { const n = LG.createNode(type); n.pos = pos; a.graph.add(n); return n; };
      const tiny = mk("ElasticDiTTestTinyModel", [0, 0]);
      const routers = mk("ElasticDiTTestRouters", [0, 170]);
      const cond = mk("ElasticDiTTestConditioning", [0, 300]);
      const latent = mk("EmptySD3LatentImage", [0, 520]);
      const apply = mk("ElasticDiTApply", [380, 0]);
      const applySizeAtCreation = [...apply.size];
      const ks = mk("KSampler", [760, 0]);
      const stats = mk("ElasticDiTStats", [1120, 0]);
      const preview = mk("PreviewImage", [1120, 200]);
      tiny.connect(0, routers, 0); tiny.connect(0, apply, 0); tiny.connect(0, cond, 0);
      routers.connect(0, apply, 1);
      apply.connect(0, ks, 0); cond.connect(0, ks, 1); cond.connect(1, ks, 2); latent.connect(0, ks, 3);
      apply.connect(0, stats, 0); ks.connect(0, stats, 1); stats.connect(0, preview, 0);
      const set = (n, name, v) => { const w = widget(n, name); if (!w) throw new Error(`${n.type} has no widget ${name}`); w.value = v; };
      for (const n of nodes()) for (const w of n.widgets || []) if (w.name === "control_after_generate") w.value = "fixed";
      set(ks, "seed", 1); set(ks, "steps", opts.steps); set(ks, "cfg", opts.cfg);
      set(ks, "sampler_name", "euler"); set(ks, "scheduler", "simple");
      set(latent, "width", opts.size); set(latent, "height", opts.size);
      set(apply, "cache_start_percent", 0);
      a.graph.setDirtyCanvas(true, true);
      return { apply: String(apply.id), ks: String(ks.id), stats: String(stats.id), preview: String(preview.id), applySizeAtCreation,
               applyComputedSize: apply.computeSize ? [...apply.computeSize()] : null };
    },

    // Record the server's events, and after each live step what the Apply node's widget shows.
    hookEvents(applyId) {
      window.__edtEvents = [];
      const node = byId(applyId);
      for (const ev of EVENTS) {
        api().addEventListener(ev, (e) => {
          const d = e.detail || {};
          const rec = { ev, node: d.node ?? null, step: d.step ?? null, prompt_id: d.prompt_id ?? null, t: performance.now() };
          if (ev.startsWith("elastic_dit.")) {  // registered after the widget's listener: the widget has drawn
            const root = document.querySelector("div.elastic-dit-heatmap");
            rec.live = !!node.elasticDiT?.payload?.live;
            rec.cells = Number(node.elasticDiT?.drawn?.cells ?? -1);
            rec.summary = node.elasticDiT ? root?.dataset.summary ?? null : null;
          }
          if (ev === "execution_error") rec.error = JSON.stringify(d).slice(0, 2000);
          window.__edtEvents.push(rec);
        });
      }
    },

    events() { return window.__edtEvents; },

    async queue() {
      const r = await app().queuePrompt(0, 1);
      return { returned: r === undefined ? null : r, nodeErrors: JSON.stringify(app().lastNodeErrors ?? null).slice(0, 2000) };
    },

    // What the Apply node's widget shows now.
    widgetState(applyId) {
      const node = byId(applyId), s = node.elasticDiT;
      const root = node.widgets.find((w) => w.name === "elastic_heatmap")?.element || document.querySelector("div.elastic-dit-heatmap");
      const canvas = root?.querySelector("canvas");
      const pl = s?.payload;
      return {
        hasState: !!s, summary: root?.dataset.summary ?? null, cells: canvas?.dataset.cells ?? null,
        estimate: canvas?.dataset.estimate ?? null, drawnCells: s?.drawn?.cells ?? null,
        pixels: canvas ? { width: canvas.width, height: canvas.height, cssWidth: canvas.clientWidth,
                           cssHeight: canvas.clientHeight, scale: Number(canvas.dataset.scale ?? NaN),
                           dpr: window.devicePixelRatio, zoom: app().canvas?.ds?.scale ?? null } : null,
        payload: pl ? { live: !!pl.live, blocks: pl.blocks.length, steps: pl.steps.length, hasCosts: !!pl.costs,
                        config: pl.config, views: pl.views.map((v) => ({ stream: v.stream, sample: v.sample,
                          actions: [...new Set(v.action.flat())].sort(), widths: [...new Set(v.width.flat())].sort() })) } : null,
        view: s?.view ?? null,
        options: [...(root?.querySelectorAll("select option") || [])].map((o) => ({ value: o.value, text: o.textContent })),
        selected: root?.querySelector("select")?.value ?? null,
        selectFit: (() => {  // the view selector's box against its longest label (truncation shows as "uncond · sample (")
          const sel = root?.querySelector("select");
          if (!sel || !sel.options.length) return null;
          const ctx = document.createElement("canvas").getContext("2d");
          ctx.font = getComputedStyle(sel).font;
          const text = Math.max(...[...sel.options].map((o) => ctx.measureText(o.textContent).width));
          return { box: sel.clientWidth, text };
        })(),
        marks: ["tau", "delta", "max_reuse", "cache_start_percent", "cache_end_percent"].map((n) => {
          const w = widget(node, n);  // what a preset did to the slider: greyed, and its label
          return w ? { name: n, value: w.value, disabled: !!w.disabled, label: w.label ?? null } : null; }),
        preset: widget(node, "preset")?.value ?? null,
        knobs: ["tau", "delta", "max_reuse"].map((n) => { const w = widget(node, n);
          return w ? { name: n, type: w.type, value: w.value, options: { min: w.options?.min, max: w.options?.max,
                       step: w.options?.step, step2: w.options?.step2, round: w.options?.round }, callback: typeof w.callback } : null; }),
      };
    },

    // Move a knob through the widget's own setter, the one its slider drag, click and arrow keys end in
    // (1.27 and later): it stores the value, fires the widget's callback and tells the node and graph.
    async setKnob(applyId, name, value) {
      const node = byId(applyId), w = widget(node, name);
      if (typeof w.setValue !== "function") throw new Error(`${name}: this frontend's widget has no setValue()`);
      w.setValue(value, { e: undefined, node, canvas: app().canvas });
      await frames(2);
      return this.widgetState(applyId);
    },

    // Put the knobs back (after a failed check), the callbacks' errors aside.
    async restoreKnobs(applyId, values) {
      const node = byId(applyId);
      for (const [name, v] of Object.entries(values)) {
        const w = widget(node, name);
        if (!w || w.value === v) continue;
        try { w.setValue(v, { e: undefined, node, canvas: app().canvas }); } catch (e) { /* reported by the test */ }
      }
      await frames(2);
    },

    async serialized(applyId) {
      const g = app().graph.serialize();
      const text = JSON.stringify(g);
      const applyNode = g.nodes.find((n) => String(n.id) === String(applyId));
      if (!applyNode) throw new Error(`node ${applyId} is not in the saved graph (ids ${g.nodes.map((n) => n.id)})`);
      const prompt = await app().graphToPrompt();
      const out = prompt.output ?? prompt;
      return { bytes: text.length, apply: applyNode, applyBytes: JSON.stringify(applyNode).length,
               applyApiInputs: Object.keys(out[String(applyId)]?.inputs ?? {}) };
    },

    // Centre the canvas on a node and zoom so that it fills most of the view; where the widget lies.
    async focus(nodeId, fill) {
      const a = app(), c = a.canvas, node = byId(nodeId);
      const el = c.canvas, W = el.clientWidth, H = el.clientHeight;
      const scale = Math.min((H * fill) / (node.size[1] + 40), (W * 0.55) / node.size[0], 3);
      c.ds.scale = scale;
      c.ds.offset[0] = W / 2 / scale - (node.pos[0] + node.size[0] / 2);
      c.ds.offset[1] = H / 2 / scale - (node.pos[1] + node.size[1] / 2 - 15);
      c.setDirty(true, true);
      c.draw?.(true, true);
      await frames(6);
      await sleep(300);
      return this.layout(nodeId);
    },

    // The whole graph in view.
    async fitAll() {
      const c = app().canvas, el = c.canvas, W = el.clientWidth, H = el.clientHeight, title = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30;
      const ns = nodes();
      const x0 = Math.min(...ns.map((n) => n.pos[0])), y0 = Math.min(...ns.map((n) => n.pos[1] - title));
      const x1 = Math.max(...ns.map((n) => n.pos[0] + n.size[0])), y1 = Math.max(...ns.map((n) => n.pos[1] + n.size[1]));
      const scale = Math.min(W / (x1 - x0 + 80), H / (y1 - y0 + 160), 1.5);
      c.ds.scale = scale;
      c.ds.offset[0] = W / 2 / scale - (x0 + x1) / 2;
      c.ds.offset[1] = H / 2 / scale - (y0 + y1) / 2;
      c.setDirty(true, true);
      await frames(6);
      await sleep(300);
    },

    // Where on screen a point of a widget lies: fraction f of its width (margins of 15 as LiteGraph draws).
    widgetPoint(nodeId, name, f) {
      const c = app().canvas, node = byId(nodeId), r = c.canvas.getBoundingClientRect(), w = widget(node, name);
      const s = c.ds.scale, o = c.ds.offset, margin = 15, h = w.computedHeight ?? window.LiteGraph.NODE_WIDGET_HEIGHT ?? 20;
      const x = node.pos[0] + margin + f * (node.size[0] - 2 * margin), y = node.pos[1] + w.y + h / 2;
      return { x: r.left + (x + o[0]) * s, y: r.top + (y + o[1]) * s };
    },

    // Screen rectangles of the node body and of its heatmap widget (CSS pixels).
    layout(nodeId) {
      const c = app().canvas, node = byId(nodeId), r = c.canvas.getBoundingClientRect();
      const s = c.ds.scale, o = c.ds.offset;
      const title = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30;
      const body = { left: r.left + (node.pos[0] + o[0]) * s, top: r.top + (node.pos[1] + o[1]) * s,
                     right: r.left + (node.pos[0] + node.size[0] + o[0]) * s,
                     bottom: r.top + (node.pos[1] + node.size[1] + o[1]) * s, titleTop: r.top + (node.pos[1] - title + o[1]) * s };
      const root = node.widgets.find((w) => w.name === "elastic_heatmap")?.element || document.querySelector("div.elastic-dit-heatmap");
      const w = root?.getBoundingClientRect();
      const canvas = root?.querySelector("canvas");
      return { scale: s, nodeSize: [...node.size], computedSize: node.computeSize ? [...node.computeSize()] : null, body,
               widget: w ? { left: w.left, top: w.top, right: w.right, bottom: w.bottom, width: w.width, height: w.height } : null,
               canvasPixels: canvas ? [canvas.width, canvas.height] : null,
               canvasCss: canvas ? [canvas.clientWidth, canvas.clientHeight] : null, dpr: window.devicePixelRatio };
    },
  };
})();
