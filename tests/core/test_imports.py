"""elastic_core must stay free of ComfyUI: scan every module's imports."""
import ast
import pathlib

CORE = pathlib.Path(__file__).resolve().parents[2] / "elastic_core"
FORBIDDEN = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "nodes", "execution",
             "comfy_execution", "latent_preview", "node_helpers"}
ALLOWED = {"torch", "safetensors", "einops", "numpy", "PIL", "matplotlib"}  # matplotlib: optional, for one plot


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def test_core_imports_no_comfyui():
    import sys
    stdlib = set(sys.stdlib_module_names)
    files = sorted(CORE.rglob("*.py"))
    assert files, "no elastic_core sources found"
    bad = [f"{p.name}:{ln} imports {mod}" for p in files for ln, mod in _imports(p)
           if mod in FORBIDDEN or (mod not in ALLOWED and mod not in stdlib)]
    assert not bad, "elastic_core may import only torch, safetensors, einops, numpy, Pillow, matplotlib and the stdlib:\n" + "\n".join(bad)


def test_scanner_catches_a_comfy_import(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os\nfrom comfy.model_patcher import ModelPatcher\n")
    assert ("comfy" in {m for _, m in _imports(f)})


def test_core_launches_no_process():
    """The engine never starts ComfyUI (or anything else): ComfyUI-side commands run with ComfyUI's own
    Python (elastic_dit_comfy.py, devtools/bench_comfy.py)."""
    bad = [f"{p.name}:{ln}" for p in sorted(CORE.rglob("*.py")) for ln, mod in _imports(p) if mod == "subprocess"]
    assert not bad, f"elastic_core imports subprocess: {bad}"
