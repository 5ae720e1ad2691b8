// Apply Elastic DiT's presets, on the node: a preset other than "sliders" overrides some sliders when the
// graph runs, so those sliders are marked (greyed, and their label says the value that will run, or
// that the router file sets it). A fixed preset also writes its values into the sliders, so that what
// they show is what runs. What each preset sets comes from the server (GET /elastic_dit/presets, made
// from the same table the node applies), never from a copy here.
import { api } from "../../scripts/api.js";
import { presetMarks } from "./preset_marks.js";

let table = null;

export function presetTable() {
  table ??= api.fetchApi("/elastic_dit/presets").then((r) => (r.ok ? r.json() : {})).catch(() => ({}));
  return table;
}

// Mark the node's knobs for the preset now chosen. -> the names of the knobs the preset overrides.
export function markPreset(node, entry, names) {
  const presetName = node.widgets?.find((w) => w.name === "preset")?.value ?? "sliders";
  const widgets = Object.fromEntries(names.map((n) => [n, node.widgets?.find((w) => w.name === n)]).filter(([, w]) => w));
  const labels = Object.fromEntries(Object.entries(widgets).map(([n, w]) => {
    w.elasticDiTLabel ??= w.label;  // the label before any preset touched it (undefined: the name is shown)
    return [n, w.elasticDiTLabel];
  }));
  const marks = presetMarks(entry, Object.keys(widgets), labels, presetName);
  for (const [name, m] of Object.entries(marks)) {
    const w = widgets[name];
    if ("value" in m && w.value !== m.value) w.value = m.value;
    w.disabled = m.disabled;
    w.label = m.label;
  }
  node.setDirtyCanvas?.(true, true);
  return Object.entries(marks).filter(([, m]) => m.disabled).map(([n]) => n);
}
