"""`python elastic_dit_comfy.py train --comfyui ... --workflow ...`: a ComfyUI model trained from the command
line, by that ComfyUI's own executor running an API-format workflow (the tiny Flux model comes from the
browser test's helper nodes, standing in for loader nodes and model files)."""
import json
import os
import subprocess
import sys

import tests.comfy  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELPERS = os.path.join(ROOT, "tests", "browser", "helper_nodes")


def _prompt(filename, steps=4):
    return {
        "1": {"class_type": "ElasticDiTTestTinyModel", "inputs": {"seed": 0}},
        "2": {"class_type": "ElasticDiTTestConditioning", "inputs": {"model": ["1", 0], "seed": 0}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "4": {"class_type": "ElasticDiTTrainRouter", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "latent_image": ["3", 0], "steps": steps,
            "learning_rate": 0.01, "rho_g": 0.5, "rho_w": 0.6, "filename": filename, "seed": 0,
            "sampling_steps": 3, "teacher_runs": 1}},
    }


def _cli(comfy_path, workflow):
    cmd = [sys.executable, os.path.join(ROOT, "elastic_dit_comfy.py"), "train", "--comfyui", comfy_path,
           "--workflow", str(workflow), "--extra-nodes", HELPERS, "--cpu"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_cli_trains_a_comfyui_model_through_its_workflow(comfy, tmp_path):
    from tests.comfy.conftest import COMFY_PATH
    wf = tmp_path / "train_api.json"
    wf.write_text(json.dumps(_prompt("cli tiny")))
    r = _cli(COMFY_PATH, wf)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "Elastic DiT: trained" in out and "the workflow ran to the end" in out, out[-3000:]
    path = out.split("Elastic DiT: trained ")[1].split(" in ")[0]
    try:
        assert os.path.isfile(path) and path.endswith(".safetensors")
    finally:  # it went to that ComfyUI's models/elastic_routers (made if missing): leave no file behind
        for p in (path, path + ".train_state"):
            if os.path.isfile(p):
                os.remove(p)


def test_cli_refuses_a_ui_workflow(comfy, tmp_path):
    from tests.comfy.conftest import COMFY_PATH
    wf = tmp_path / "ui.json"
    with open(os.path.join(ROOT, "workflows", "flux-dev-train-router.json")) as f:
        wf.write_text(f.read())
    r = _cli(COMFY_PATH, wf)
    assert r.returncode != 0 and "API format" in (r.stdout + r.stderr)


def test_cli_under_torchrun_equals_one_process_with_the_global_batch(comfy, tmp_path):
    """2 processes (gloo on the CPU), a global batch of 2: DDP gives the routers one process trains."""
    import torch
    from safetensors.torch import load_file

    from tests.comfy.conftest import COMFY_PATH
    states = {}
    try:
        for name, launcher in (("cli ddp one", []),
                               ("cli ddp two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])):
            prompt = _prompt(name, steps=3)
            prompt["4"]["inputs"]["batch_size"] = 2
            wf = tmp_path / f"{name}.json"
            wf.write_text(json.dumps(prompt))
            cmd = [sys.executable, *launcher, os.path.join(ROOT, "elastic_dit_comfy.py"), "train", "--comfyui",
                   COMFY_PATH, "--workflow", str(wf), "--extra-nodes", HELPERS, "--cpu"]
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
            out = r.stdout + r.stderr
            assert r.returncode == 0 and "Elastic DiT: trained" in out, out[-4000:]
            states[name] = out.split("Elastic DiT: trained ")[1].split(" in ")[0]
        a, b = (load_file(states[n] + ".train_state") for n in ("cli ddp one", "cli ddp two"))
        keys = [k for k in a if k.startswith("routers.")]
        assert keys and set(keys) == {k for k in b if k.startswith("routers.")}
        for k in keys:
            torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=k)
    finally:  # written to that ComfyUI's models/elastic_routers: leave no file behind
        for path in states.values():
            for p in (path, path + ".train_state"):
                if os.path.isfile(p):
                    os.remove(p)
