"""Bad numbers and paths on the command lines are refused by argparse: usage, `error: argument ...`, exit 2,
no traceback, nothing started (`train --steps -5` once trained for minutes and wrote a file)."""
import argparse
import importlib.util
from pathlib import Path

import pytest

from elastic_core.argtypes import FRACTION, POSITIVE_FLOAT, POSITIVE_INT, int_at_least
from elastic_core.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv, flag", [
    (["demo", "--samples", "-1"], "--samples"),
    (["demo", "--samples", "0"], "--samples"),
    (["demo", "--steps", "-5"], "--steps"),
    (["demo", "--threads", "-2"], "--threads"),
    (["demo", "--samples", "three"], "--samples"),
    (["train", "--steps", "-5"], "--steps"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--rho-g", "1.5"], "--rho-g"),
    (["train", "--batch", "0"], "--batch"),
    (["train", "--backbone-lr", "-0.001"], "--backbone-lr"),
    (["toy-build", "--dit-steps", "0"], "--dit-steps"),
    (["toy-build", "--threads", "0"], "--threads"),
    (["convert", "a.safetensors", "b.safetensors", "--power-iters", "-1"], "--power-iters"),
])
def test_bad_numbers_are_usage_errors(argv, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}: {argv[argv.index(flag) + 1]}" in err and "usage:" in err, err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir()), "nothing may be written for a refused command"


def test_types_accept_their_range():
    assert POSITIVE_INT("1") == 1 and int_at_least(0)("0") == 0
    assert POSITIVE_FLOAT("1e-4") == 1e-4 and FRACTION("0") == 0.0 and FRACTION("1") == 1.0
    for parse, text in ((POSITIVE_INT, "1.5"), (POSITIVE_INT, "0"), (POSITIVE_FLOAT, "0"), (POSITIVE_FLOAT, "inf"),
                        (FRACTION, "1.01"), (FRACTION, "-0.1")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)

def _comfy_cli():
    spec = importlib.util.spec_from_file_location("elastic_dit_comfy", ROOT / "elastic_dit_comfy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # imports no ComfyUI at module level
    return mod


@pytest.mark.parametrize("args, text", [
    (["--comfyui", "/nonexistent-comfyui", "--workflow", "w.json"], "/nonexistent-comfyui: not a folder"),
    (["--comfyui", ".", "--workflow", "w.json"], "no main.py, nodes.py, comfy there"),
])
def test_comfy_train_refuses_a_folder_that_is_not_comfyui(args, text, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        _comfy_cli().main(["train"] + args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: argument --comfyui" in err and text in err and "Traceback" not in err, err


def test_comfy_train_refuses_a_missing_workflow(tmp_path, capsys):
    comfy = tmp_path / "ComfyUI"
    (comfy / "comfy").mkdir(parents=True)
    for name in ("main.py", "nodes.py"):
        (comfy / name).write_text("")
    with pytest.raises(SystemExit) as e:
        _comfy_cli().main(["train", "--comfyui", str(comfy), "--workflow", str(tmp_path / "missing.json")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: argument --workflow" in err and "missing.json: not a file" in err, err


def test_comfy_help_is_complete(capsys):
    with pytest.raises(SystemExit) as e:
        _comfy_cli().main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    # the whole first paragraph of the module's docstring, not a line cut mid-sentence
    assert "trained from a terminal or a job queue." in out and "train" in out, out
    assert "usage: elastic_dit_comfy.py" in out
