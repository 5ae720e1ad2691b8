"""The `elastic-dit` CLI: inspect, convert, error handling, the command list."""
import json

import pytest
import torch

from elastic_core.checkpoint import describe, import_released, load_routers
from elastic_core.cli import main

from .test_checkpoint import N, write_ours, write_released


def test_inspect_text(tmp_path, capsys):
    path = write_ours(tmp_path / "r.safetensors")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    for word in ("family      flux", "blocks      3", "dim 32", "router hidden 8", "0.25, 0.5, 0.75, 1",
                 "tau 0.4", "rho_g 0.6", "trainer test", "gate bias", "p_open", "double_blocks.2"):
        assert word in out, word
    assert len([ln for ln in out.splitlines() if "double_blocks." in ln]) == N


def test_inspect_json(tmp_path, capsys):
    path = write_ours(tmp_path / "r.safetensors")
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == json.loads(json.dumps(describe(load_routers(path))))
    assert info["blocks"] == N and len(info["per_block"]) == N


def test_convert_then_inspect(tmp_path, capsys):
    src = write_released(tmp_path / "model.safetensors", prefix="model.diffusion_model.")
    out = tmp_path / "routers.safetensors"
    assert main(["convert", str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "routers.safetensors" in printed and f"{N} routers" in printed
    got, want = load_routers(out), import_released(src)
    assert got.meta == want.meta
    for k, v in want.routers.state_dict().items():
        assert torch.equal(got.routers.state_dict()[k], v), k
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "qwen_image" in text and "transformer_blocks.2" in text and "source model.safetensors" in text


def test_convert_refuses_overwrite_and_same_file(tmp_path, capsys):
    src = write_released(tmp_path / "model.safetensors")
    out = tmp_path / "routers.safetensors"
    out.write_bytes(b"keep me")
    assert main(["convert", str(src), str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["convert", str(src), str(out), "--force"]) == 0
    assert load_routers(out).meta.family == "qwen_image"
    assert main(["convert", str(src), str(src), "--force"]) == 2
    assert "input file" in capsys.readouterr().err


def test_bad_file_exit_2_without_traceback(tmp_path, capsys):
    bad = tmp_path / "broken.safetensors"
    bad.write_text("not a tensor file at all")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.safetensors" in err and "Traceback" not in err
    plain = write_released(tmp_path / "plain.safetensors", edit=lambda t: {k: v for k, v in t.items() if "gate" not in k})
    assert main(["convert", str(plain), str(tmp_path / "o.safetensors")]) == 2
    assert "plain model file" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "inspect" in capsys.readouterr().err


def test_every_command_is_listed(capsys):
    assert main([]) == 2
    listed = capsys.readouterr().err
    for cmd in ("inspect", "convert", "bench", "demo", "train", "toy-build"):
        assert cmd in listed


@pytest.mark.parametrize("argv", [["train", "--comfyui", "somewhere"], ["bench", "--comfy"]])
def test_comfyui_commands_point_to_comfyuis_python(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ("elastic_dit_comfy.py train" if argv[0] == "train" else "devtools/bench_comfy.py") in err, err


def test_train_resume_across_layouts_refused_before_training(tmp_path, capsys):
    from elastic_core.toy.pipeline import load_dit
    from elastic_core.toy.training import new_routers
    from elastic_core.train import RouterTrainer, TrainConfig
    state = str(tmp_path / "released.state")
    RouterTrainer(new_routers(load_dit(), 0, "released"), TrainConfig()).save(state)
    out = tmp_path / "r.safetensors"
    assert main(["train", "--steps", "1", "--resume", state, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "released.state holds released-layout routers but this run trains compact-layout ones" in err, err
    assert not out.exists()


def test_inspect_prints_the_layout(tmp_path, capsys):
    from elastic_core.checkpoint import save_routers

    from .test_checkpoint import make_compact, make_meta
    routers = make_compact()
    path = tmp_path / "c.safetensors"
    save_routers(path, routers, make_meta(routers))
    assert main(["inspect", str(path)]) == 0
    n = sum(p.numel() for p in routers[0].parameters())
    assert f"layout      compact (modulation rank 4), {n:,} parameters per router" in capsys.readouterr().out
