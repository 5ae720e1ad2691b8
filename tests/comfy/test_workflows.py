"""The example workflows (workflows/*.json) against a real ComfyUI.

They are in ComfyUI's UI format (what the frontend saves, and loads by drag and drop). Checked here:
the file's structure and layout (no ComfyUI needed); then, against the real ComfyUI's node definitions
(core nodes, comfy_extras and this pack): every node type exists, widgets_values line up with the
widgets the frontend makes from INPUT_TYPES, values are in range and in their combo lists, and every
link carries the type its source returns and its target takes. Last, each workflow is converted to
the API format and run through ComfyUI's own `execution.validate_prompt`.
"""
import asyncio
import enum
import glob
import inspect
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "workflows", "*.json")))
EXPECTED = {"qwen-image-e-dit.json", "flux-dev-elastic.json", "flux-dev-train-router.json", "hunyuan3d-elastic.json",
            "flux-dev-train-router-lora.json", "qwen-image-e-dit-lora.json", "flux2-elastic.json", "z-image-elastic.json",
            "qwen-image-edit-elastic.json", "wan-elastic.json"}

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # never reach the server
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}  # everything else is a socket
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
# Combos listing model files: their values may name files absent here. (class, input) -> models/ folder
FILE_INPUTS = {
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("LoadImage", "image"): "input",  # ComfyUI/input/, not under models/
    ("ElasticDiTRouterLoader", "router_name"): "elastic_routers",  # or diffusion_models/<released checkpoint>
    ("LoraLoaderModelOnly", "lora_name"): "loras",
}
RELEASED_PREFIX = "diffusion_models/"
APPLY_REQUIRED = ["model", "router", "tau", "delta", "max_reuse", "skip_blocks", "adapt_width", "cache",
                  "cache_start_percent", "cache_end_percent"]
APPLY_OPTIONAL = ["preset", "cache_device", "cache_budget", "authors_activation"]
NODE_TITLE_H, GROUP_TITLE_H = 30, 34  # LiteGraph draws a node's title bar above its pos


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(params=WORKFLOWS, ids=os.path.basename)
def wf(request):
    return _load(request.param)


@pytest.fixture(scope="module")
def mappings(comfy):
    """NODE_CLASS_MAPPINGS with core, comfy_extras (as the server loads them) and this pack."""
    nodes, _ = comfy
    if "EmptySD3LatentImage" not in nodes.NODE_CLASS_MAPPINGS:  # comfy_extras are not loaded by the boot
        asyncio.run(nodes.init_builtin_extra_nodes())
    return nodes.NODE_CLASS_MAPPINGS


def _skip_without_model_class(wf):
    """A workflow for a family whose model class (extra.elastic_dit.model_class, in
    comfy.supported_models) this ComfyUI does not ship is skipped, saying so; its nodes need it too."""
    import comfy.supported_models
    need = wf.get("extra", {}).get("elastic_dit", {}).get("model_class")
    if need and not hasattr(comfy.supported_models, need):
        pytest.skip(f"this ComfyUI has no {need} model class; the workflow is for a ComfyUI that has")


def _classes(wf, mappings):
    """{node id: class} for the server-side nodes; skips while the Stats node is still unwritten."""
    _skip_without_model_class(wf)
    out = {}
    for n in wf["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        if n["type"] not in mappings:
            if n["type"] == "ElasticDiTStats":
                pytest.skip("ElasticDiTStats is not registered yet in this pack; the workflows use it, "
                            "so this check waits until the node exists")
            pytest.fail(f"node {n['id']}: type {n['type']!r} is not a node of this ComfyUI")
        out[n["id"]] = mappings[n["type"]]
    return out


# -- INPUT_TYPES as the frontend reads it ----------------------------------------------------------

def _norm(t):
    if isinstance(t, (list, tuple)):
        return list(t)  # combo options
    return t.value if isinstance(t, enum.Enum) else str(t)  # v0.8.0 core uses the IO str-enum


def _specs(cls):
    """[(name, type, options)] in widget-creation order: required, then optional (hidden never)."""
    it = cls.INPUT_TYPES()
    return [(name, _norm(spec[0]), spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
            for cat in ("required", "optional") for name, spec in (it.get(cat) or {}).items()]


def _is_widget(typ, opts):
    return not opts.get("forceInput") and (isinstance(typ, list) or typ in WIDGET_TYPES)


def _has_control(name, typ, opts):
    return bool(opts.get("control_after_generate")) or (typ == "INT" and name in ("seed", "noise_seed"))


def _has_upload(opts):
    """An image_upload combo gets an upload button after it, saved as the value "image"."""
    return bool(opts.get("image_upload"))


def _options(typ, opts):
    return typ if isinstance(typ, list) else opts.get("options", [])


def _bind(node, cls):
    """[(name, type, options, value, control value or None)]: widgets_values matched to the widgets."""
    widgets = [(n, t, o) for n, t, o in _specs(cls) if _is_widget(t, o)]
    want = sum(1 + _has_control(n, t, o) + _has_upload(o) for n, t, o in widgets)
    values = node["widgets_values"]
    assert isinstance(values, list) and len(values) == want, (
        f"node {node['id']} {node['type']}: {len(values)} widgets_values {values!r}, but the frontend makes "
        f"{want} widgets: {[n for n, _, _ in widgets]} (+1 control value after seed-like inputs)")
    out, it = [], iter(values)
    for n, t, o in widgets:
        out.append((n, t, o, next(it), next(it) if _has_control(n, t, o) else None))
        if _has_upload(o):
            assert next(it) == "image", f"node {node['id']} {node['type']}: the upload widget's value"
    return out


def _file_entries(wf, classes):
    """[(node, input name, folder, file name)] for every model-file combo in the workflow."""
    out = []
    for n in wf["nodes"]:
        if n["id"] not in classes:
            continue
        for name, _, _, value, _ in _bind(n, classes[n["id"]]):
            folder = FILE_INPUTS.get((n["type"], name))
            if folder is None:
                continue
            if n["type"] == "ElasticDiTRouterLoader" and value.startswith(RELEASED_PREFIX):
                folder, value = "diffusion_models", value[len(RELEASED_PREFIX):]
            out.append((n, name, folder, value))
    return out


def _node(wf, node_id):
    return next(n for n in wf["nodes"] if n["id"] == node_id)


def to_api(wf, classes):
    """The API format the frontend queues: {node id: {class_type, inputs}}; links as [id, slot].
    (Compared by hand with `app.graphToPrompt()` in frontends 1.27.10 and 1.35.9: identical but `_meta`.)"""
    links = {l[0]: l for l in wf["links"]}
    api = {}
    for n in wf["nodes"]:
        if n["id"] not in classes:
            continue
        inputs = {name: value for name, _, _, value, _ in _bind(n, classes[n["id"]])}
        for slot in n["inputs"]:
            if slot.get("link") is not None:
                src = links[slot["link"]]
                assert _node(wf, src[1])["type"] not in FRONTEND_ONLY, "Reroute/Primitive sources: not supported here"
                inputs[slot["name"]] = [str(src[1]), src[2]]
        api[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return api


def _validate(api):
    """ComfyUI's own validation: (valid, error, good outputs, node errors)."""
    try:
        import execution
    except ImportError as e:
        pytest.skip(f"ComfyUI's execution module cannot be imported without a server here ({e})")
    fn = execution.validate_prompt
    args = ("elastic-dit-workflow-test", api, None)
    return asyncio.run(fn(*args)) if inspect.iscoroutinefunction(fn) else fn(*args)


def _outputs(classes):
    return {str(i) for i, c in classes.items() if getattr(c, "OUTPUT_NODE", False) is True}


# -- file structure and layout (no ComfyUI needed) -------------------------------------------------

def test_the_example_workflows_are_there():
    assert EXPECTED <= {os.path.basename(p) for p in WORKFLOWS}


def test_ui_format_and_links_are_consistent(wf):
    assert wf["version"] == 0.4
    for key in ("nodes", "links", "groups", "config", "extra", "last_node_id", "last_link_id"):
        assert key in wf, key
    ids = [n["id"] for n in wf["nodes"]]
    assert len(set(ids)) == len(ids) and wf["last_node_id"] >= max(ids)
    assert wf["last_link_id"] >= max(l[0] for l in wf["links"])
    nodes = {n["id"]: n for n in wf["nodes"]}
    for n in wf["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                    "widgets_values"):
            assert key in n, (n["id"], key)
        assert n["mode"] == 0, f"node {n['id']} {n['type']} is muted or bypassed"
        if n["type"] not in FRONTEND_ONLY:
            assert n["properties"]["Node name for S&R"] == n["type"]
    for lid, src, src_slot, dst, dst_slot, typ in wf["links"]:
        out, inp = nodes[src]["outputs"][src_slot], nodes[dst]["inputs"][dst_slot]
        assert lid in (out["links"] or []) and inp["link"] == lid, f"link {lid} is not recorded on its nodes"
        assert out["type"] == typ == inp["type"], f"link {lid}: {out['type']} -> {typ} -> {inp['type']}"
        assert nodes[src]["order"] < nodes[dst]["order"], f"link {lid} runs against the execution order"
    linked = {l[0] for l in wf["links"]}
    for n in wf["nodes"]:
        assert all(i["link"] is None or i["link"] in linked for i in n["inputs"]), n["id"]
        assert all(set(o["links"] or []) <= linked for o in n["outputs"]), n["id"]
    assert sorted(n["order"] for n in wf["nodes"]) == list(range(len(ids)))


def _rect(n):
    (x, y), (w, h) = n["pos"], n["size"]
    return x, y - NODE_TITLE_H, x + w, y + h


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_layout_is_readable(wf):
    rects = [(n["id"], _rect(n)) for n in wf["nodes"]]
    for i, (ia, a) in enumerate(rects):
        for ib, b in rects[i + 1:]:
            assert not _overlap(a, b), f"nodes {ia} and {ib} overlap"
    groups = [(g["title"], g["bounding"]) for g in wf["groups"]]
    boxes = [(t, (x, y, x + w, y + h)) for t, (x, y, w, h) in groups]
    for title, (gx, gy, gw, gh) in groups:
        body = (gx, gy + GROUP_TITLE_H, gx + gw, gy + gh)
        inside = [i for i, r in rects if r[0] >= body[0] and r[1] >= body[1] and r[2] <= body[2] and r[3] <= body[3]]
        assert inside, f"group {title!r} holds no node"
        for i, r in rects:  # a node is in a group or clear of it, never half in (nor under its title)
            assert i in inside or not _overlap(r, (gx, gy, gx + gw, gy + gh)), f"node {i} straddles group {title!r}"
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1:]:
            assert not _overlap(a, b), f"groups {ta!r} and {tb!r} overlap"


def test_elastic_wiring(wf):
    """Model -> Apply -> KSampler; Stats reads the Apply output after that KSampler; heatmap -> preview."""
    nodes = {n["id"]: n for n in wf["nodes"]}
    src = {(l[3], nodes[l[3]]["inputs"][l[4]]["name"]): nodes[l[1]] for l in wf["links"]}
    (apply,) = [n for n in wf["nodes"] if n["type"] == "ElasticDiTApply"]
    (stats,) = [n for n in wf["nodes"] if n["type"] == "ElasticDiTStats"]
    assert [i["name"] for i in apply["inputs"]] == ["model", "router"]
    assert src[(apply["id"], "router")]["type"] in ("ElasticDiTRouterLoader", "ElasticDiTTrainRouter")
    model, lora = src[(apply["id"], "model")], False
    while model["type"] in ("LoraLoaderModelOnly", "ModelSamplingAuraFlow"):  # a LoRA goes on BEFORE Apply
        lora |= model["type"] == "LoraLoaderModelOnly"
        model = src[(model["id"], "model")]
    assert model["type"] in ("UNETLoader", "ImageOnlyCheckpointLoader")
    if lora:  # routers trained with that LoRA come from a router file
        assert src[(apply["id"], "router")]["type"] == "ElasticDiTRouterLoader"
    sampler = src[(stats["id"], "samples")]
    assert sampler["type"] == "KSampler" and src[(sampler["id"], "model")] is apply
    assert src[(stats["id"], "model")] is apply
    assert any(l[1] == stats["id"] and l[2] == 0 and nodes[l[3]]["type"] == "PreviewImage" for l in wf["links"])


# -- against the real ComfyUI ----------------------------------------------------------------------

def test_node_types_exist(wf, mappings):
    _skip_without_model_class(wf)
    types = {n["type"] for n in wf["nodes"]} - FRONTEND_ONLY
    unknown = sorted(t for t in types if t not in mappings)
    if unknown == ["ElasticDiTStats"]:
        _classes(wf, mappings)  # skips, saying why
    assert not unknown, f"not node types of this ComfyUI (core, comfy_extras, this pack): {unknown}"
    assert {"ElasticDiTApply", "ElasticDiTStats"} <= types
    assert types & {"ElasticDiTRouterLoader", "ElasticDiTTrainRouter"}


def test_apply_node_interface(mappings):
    it = mappings["ElasticDiTApply"].INPUT_TYPES()
    assert list(it["required"]) == APPLY_REQUIRED
    assert list(it["optional"]) == APPLY_OPTIONAL
    assert it["hidden"] == {"unique_id": "UNIQUE_ID"}


def test_widgets_values_match_input_types(wf, mappings):
    classes = _classes(wf, mappings)
    for n in wf["nodes"]:
        if n["type"] in ("Note", "MarkdownNote"):
            assert len(n["widgets_values"]) == 1 and isinstance(n["widgets_values"][0], str)
        if n["id"] not in classes:
            continue
        where = f"node {n['id']} {n['type']}"
        for name, typ, opts, value, control in _bind(n, classes[n["id"]]):
            if control is not None:
                assert control in CONTROL_VALUES, f"{where}.{name}: control value {control!r}"
            if isinstance(typ, list) or typ == "COMBO":
                if (n["type"], name) not in FILE_INPUTS:
                    assert value in _options(typ, opts), f"{where}.{name}: {value!r} not in {_options(typ, opts)}"
                continue
            kind = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}[typ]
            assert isinstance(value, kind) and (typ == "BOOLEAN" or not isinstance(value, bool)), \
                f"{where}.{name}: {value!r} is not {typ}"
            if typ in ("INT", "FLOAT"):
                lo, hi = opts.get("min", value), opts.get("max", value)
                assert lo <= value <= hi, f"{where}.{name}: {value} out of range [{lo}, {hi}]"


def test_inputs_added_later_come_last(mappings):
    """widgets_values bind by position: a workflow saved before an input existed lacks its value, so new
    inputs come LAST; the older widgets keep their saved values and the new one takes its default."""
    opt = mappings["ElasticDiTApply"].INPUT_TYPES()["optional"]
    assert APPLY_OPTIONAL[:2] == ["preset", "cache_device"] and APPLY_OPTIONAL[-1] == "authors_activation"
    assert opt["authors_activation"][1]["default"] is True and opt["authors_activation"][1]["tooltip"]


def test_apply_widgets_in_order(wf, mappings):
    (apply,) = [n for n in wf["nodes"] if n["type"] == "ElasticDiTApply"]
    bound = _bind(apply, mappings["ElasticDiTApply"])
    assert [b[0] for b in bound] == APPLY_REQUIRED[2:] + APPLY_OPTIONAL


def test_links_match_node_definitions(wf, mappings):
    classes = _classes(wf, mappings)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for lid, src, src_slot, dst, dst_slot, typ in wf["links"]:
        s, d = nodes[src], nodes[dst]
        rtypes = [_norm(t) for t in classes[src].RETURN_TYPES]
        rnames = list(getattr(classes[src], "RETURN_NAMES", None) or rtypes)
        assert s["outputs"][src_slot]["name"] == rnames[src_slot], f"link {lid}: output name"
        assert typ == rtypes[src_slot], f"link {lid}: {s['type']} returns {rtypes[src_slot]}, link says {typ}"
        name = d["inputs"][dst_slot]["name"]
        specs = {n: t for n, t, _ in _specs(classes[dst])}
        assert name in specs, f"link {lid}: {d['type']} has no input {name!r}"
        accepts = specs[name]
        assert accepts == "*" or typ in str(accepts).split(","), f"link {lid}: {d['type']}.{name} takes {accepts}"
    for n in wf["nodes"]:  # every socket the node requires is connected
        if n["id"] in classes:
            linked = {i["name"] for i in n["inputs"] if i["link"] is not None}
            required = classes[n["id"]].INPUT_TYPES().get("required", {})
            sockets = {name for name, t, o in _specs(classes[n["id"]]) if name in required and not _is_widget(t, o)}
            assert sockets <= linked, f"node {n['id']} {n['type']}: unconnected {sockets - linked}"


def test_note_says_where_every_file_goes(wf, mappings):
    classes = _classes(wf, mappings)
    text = "\n".join(n["widgets_values"][0] for n in wf["nodes"] if n["type"] in ("Note", "MarkdownNote"))
    entries = _file_entries(wf, classes)
    assert entries
    for n, _, folder, name in entries:
        where = f"input/{name}" if folder == "input" else f"models/{folder}/{name}"
        assert where in text, f"the Note does not say {where}"
    released = [v for n, i, f, v in entries if n["type"] == "ElasticDiTRouterLoader" and f == "diffusion_models"]
    unets = {v for n, i, f, v in entries if n["type"] == "UNETLoader"}
    assert all(r in unets for r in released), "a released checkpoint's routers come with that same model file"


def test_comfy_validation_fails_only_on_absent_model_files(wf, mappings):
    classes = _classes(wf, mappings)
    valid, error, _, node_errors = _validate(to_api(wf, classes))
    if not valid:
        assert error["type"] == "prompt_outputs_failed_validation", error
    for node_id, info in node_errors.items():
        for e in info["errors"]:
            name = (e.get("extra_info") or {}).get("input_name")
            if info["class_type"] == "LoadImage" and e["type"] == "custom_validation_failed":
                continue  # LoadImage checks that its file exists itself ("Invalid image file")
            assert e["type"] == "value_not_in_list" and (info["class_type"], name) in FILE_INPUTS, \
                f"node {node_id} {info['class_type']}: {e['message']}: {e['details']}"


def test_comfy_validation_passes_with_the_model_files_present(wf, mappings, tmp_path, monkeypatch):
    """Placeholder files under the names the workflow uses: then ComfyUI's validation has nothing to say."""
    import folder_paths
    import torch
    from safetensors.torch import save_file

    classes = _classes(wf, mappings)
    (tmp_path / "input").mkdir()
    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path / "input"))
    for folder in {f for _, _, f, _ in _file_entries(wf, classes)} - {"input"}:
        paths, exts = folder_paths.folder_names_and_paths[folder]
        monkeypatch.setitem(folder_paths.folder_names_and_paths, folder, ([str(tmp_path / folder)] + list(paths), exts))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    for _, _, folder, name in _file_entries(wf, classes):
        (tmp_path / folder).mkdir(exist_ok=True)
        # a released E-DiT checkpoint is listed by the router loader only when it holds gate_mlps.* tensors
        save_file({"gate_mlps.0.out.2.bias": torch.zeros(1)}, str(tmp_path / folder / name))
    valid, error, good, node_errors = _validate(to_api(wf, classes))
    assert valid is True and node_errors == {}, (error, node_errors)
    assert set(good) == _outputs(classes) and good


def test_lora_workflow_loads_what_its_training_saves(mappings):
    """Train with a LoRA, then LoraLoaderModelOnly + Load Elastic Router: both loaders name the files the
    Train node writes (models/loras/<filename>, models/elastic_routers/<filename>)."""
    wf = _load(os.path.join(ROOT, "workflows", "flux-dev-train-router-lora.json"))
    values = {n["type"]: {name: v for name, _, _, v, _ in _bind(n, mappings[n["type"]])}
              for n in wf["nodes"] if n["type"] not in FRONTEND_ONLY}
    train = values["ElasticDiTTrainRouter"]
    assert train["lora_rank"] > 0
    name = train["filename"] + ".safetensors"
    assert values["LoraLoaderModelOnly"]["lora_name"] == values["ElasticDiTRouterLoader"]["router_name"] == name
