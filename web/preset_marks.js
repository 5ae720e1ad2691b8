// What a preset of Apply Elastic DiT does to each slider (pure; tested under `node --test`).

const fmt = (v) => (typeof v === "number" ? String(Number(v.toFixed(4))) : String(v));

// Pure: what a preset does to each knob. -> { name: { value?, label, disabled } } for every name given.
export function presetMarks(entry, names, labels, presetName) {
  const sets = entry?.sets ?? {}, fromFile = entry?.from_file ?? [];
  const out = {};
  for (const name of names) {
    if (name in sets) out[name] = { value: sets[name], disabled: true, label: `${name} = ${fmt(sets[name])} (${presetName})` };
    else if (fromFile.includes(name)) out[name] = { disabled: true, label: `${name}: from router file` };
    else out[name] = { disabled: false, label: labels[name] };
  }
  return out;
}
