"""The two ways docs/cli.md gives to run `elastic-dit`, tried on a fresh copy of the repository in a temporary
folder, as a user who cloned it into ComfyUI/custom_nodes would: `python -m elastic_core.cli` from the pack
folder, and `pip install -e` into another Python (here a bare venv that sees this one's packages, so the
install needs no network)."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP = {".git", ".venv", "build", "dist", "bench-results", "demo-output", "node_modules", "__pycache__", "tests"}


def _fresh_copy(dest: Path) -> Path:
    """The files a clone has: git's tracked files where this is a checkout, else the tree minus build output."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True)
    repo = dest / "comfyui-elastic-dit"
    if listed.returncode == 0 and listed.stdout:
        for rel in filter(None, listed.stdout.decode().split("\0")):
            if rel.startswith("tests/") or not (ROOT / rel).is_file():
                continue  # tests stay out (fast); a file deleted in the working tree is not in a clone either
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    else:
        shutil.copytree(ROOT, repo, ignore=lambda d, names: [n for n in names if n in SKIP or n.endswith(".egg-info")])
    return repo


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def test_python_m_cli_from_the_pack_folder(tmp_path):
    repo = _fresh_copy(tmp_path)  # `python -m` puts the working folder first on sys.path: the copy is what runs
    r = subprocess.run([sys.executable, "-m", "elastic_core.cli", "--help"], cwd=repo, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    for command in ("inspect", "convert", "demo", "train", "bench"):
        assert command in r.stdout, command


def test_pip_install_editable_gives_the_command(tmp_path):
    pytest.importorskip("setuptools", reason="pip install -e needs setuptools to build the pack")
    repo = _fresh_copy(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The venv sees this Python's packages (torch, setuptools, ...) through a .pth file: no download.
    Path(site, "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                        "--no-build-isolation", "-q", "-e", str(repo)], env=_env(), capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0 and "no such option: --python" in r.stderr:
        pytest.skip("this pip is older than 22.3 (no --python option)")
    assert r.returncode == 0, r.stderr
    exe = venv / ("Scripts/elastic-dit.exe" if os.name == "nt" else "bin/elastic-dit")
    r = subprocess.run([str(exe), "--help"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "convert" in r.stdout, r.stderr
    # Editable: the installed metadata points at the clone itself, so a `git pull` there needs no reinstall.
    direct = json.loads(next(Path(site).glob("comfyui_elastic_dit-*.dist-info/direct_url.json")).read_text())
    assert direct["dir_info"].get("editable") is True and direct["url"] == repo.as_uri(), direct
