"""`elastic-dit convert --base`: the released checkpoint as routers + a LoRA of (released - base).

Measured here: exact recovery of low-rank differences, an honest error for differences that are not
low rank (the optimum a rank-r LoRA can reach, by Eckart-Young), the file layout ComfyUI loads, bad
input refused before anything is written, and the memory the conversion uses.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from devtools.convert_memory import block_shapes, check, write_pair
from elastic_core.checkpoint import import_released, load_routers
from elastic_core.cli import main
from elastic_core.lora_extract import StreamWriter, extract_lora, low_rank

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _reader(delta: torch.Tensor):
    return lambda a, b: (delta[a:b].clone(), torch.zeros(b - a, delta.shape[1]))


def test_low_rank_recovers_a_low_rank_difference_exactly():
    g = torch.Generator().manual_seed(0)
    for m, n, k in ((96, 40, 5), (40, 96, 8), (300, 64, 1)):
        delta = torch.randn(m, k, generator=g) @ torch.randn(k, n, generator=g)
        lr = low_rank(_reader(delta), m, n, rank=8)
        assert lr.up.shape == (m, min(8, n)) and lr.down.shape == (min(8, n), n)
        torch.testing.assert_close(lr.up @ lr.down, delta, atol=1e-4, rtol=1e-4)
        assert (lr.err2 / lr.delta2) ** 0.5 < 1e-5


def test_low_rank_error_is_measured_and_near_the_optimum():
    """A full-rank difference: the error reported is the residual's true norm, within 2 % of the best a
    rank-r matrix can do (the tail of the singular values)."""
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(200, 120, generator=g)
    lr = low_rank(_reader(delta), 200, 120, rank=16)
    true = float(((delta - lr.up @ lr.down) ** 2).sum())
    assert lr.err2 == pytest.approx(true, rel=1e-4)
    s = torch.linalg.svdvals(delta)
    best = float((s[16:] ** 2).sum())
    assert best <= lr.err2 <= 1.02 ** 2 * best
    assert 0.8 < (lr.err2 / lr.delta2) ** 0.5 < 1.0  # honest: a random matrix is far from rank 16


def test_stream_writer_writes_a_safetensors_file(tmp_path):
    path = str(tmp_path / "s.safetensors")
    w = StreamWriter(path)
    want = {"a": torch.randn(3, 5), "b": torch.randn(7).bfloat16(), "c": torch.tensor(2.0), "d": torch.randn(2, 2).half()}
    for k, v in want.items():
        w.add(k, v)
    w.close({"x": "y"})
    got = load_file(path)
    for k, v in want.items():
        assert torch.equal(got[k], v) and got[k].dtype == v.dtype, k
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"x": "y"}
    assert sorted(os.listdir(tmp_path)) == ["s.safetensors"]  # no side files left


def _merge(base_path, lora_path, prefix=""):
    """What ComfyUI does with the LoRA: W + (alpha / r) up @ down; bias / norm diffs added whole."""
    base, lora = load_file(base_path), load_file(lora_path)
    out = {}
    for k, w in base.items():
        stem = "diffusion_model." + (k[:-7] if k.endswith(".weight") else k)
        if stem + ".lora_up.weight" in lora:
            up, down = lora[stem + ".lora_up.weight"].float(), lora[stem + ".lora_down.weight"].float()
            w = w.float() + lora[stem + ".alpha"].item() / up.shape[1] * up @ down
        elif stem + ".diff" in lora:
            w = w.float() + lora[stem + ".diff"].float()
        out[prefix + k] = w.float()
    return out


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_convert_with_base_recovers_a_low_rank_release(tmp_path, capsys, prefix):
    base, rel, _ = write_pair(str(tmp_path), blocks=3, dim=32, delta_rank=4, dtype=torch.float32, prefix=prefix)
    out, lora = str(tmp_path / "routers.safetensors"), str(tmp_path / "routers-lora.safetensors")
    report = str(tmp_path / "report.json")
    assert main(["convert", rel, out, "--base", base, "--lora-rank", "8", "--lora-dtype", "fp32",
                 "--report", report]) == 0
    printed = capsys.readouterr().out
    assert "3 routers" in printed and "relative error of the LoRA" in printed
    assert os.path.isfile(lora) and load_routers(out).meta.provenance["lora"] == "routers-lora.safetensors"
    got, want = load_routers(out), import_released(rel)
    for k, v in want.routers.state_dict().items():
        assert torch.equal(got.routers.state_dict()[k], v), k
    with safe_open(lora, "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert meta["format"] == "elastic-dit-lora" and meta["router_file"] == "routers.safetensors"
    assert "diffusion_model.transformer_blocks.0.attn.to_q.lora_up.weight" in keys
    assert "diffusion_model.transformer_blocks.0.attn.to_q.bias.diff" in keys
    assert "diffusion_model.transformer_blocks.2.img_mod.1.lora_down.weight" in keys
    assert not any("gate_mlps" in k for k in keys)
    rep = json.load(open(report))
    assert rep["total"]["rel_error"] < 1e-5 and len(rep["layers"]) == 3 * 14
    assert all(x["rel_error"] < 1e-5 for x in rep["layers"])
    released = {k: v for k, v in load_file(rel).items() if "gate_mlps" not in k}
    merged = _merge(base, lora, prefix)
    for k, v in released.items():
        torch.testing.assert_close(merged[k], v, atol=1e-5, rtol=1e-5, msg=k)


def test_convert_reports_the_error_of_a_release_that_is_not_low_rank(tmp_path, capsys):
    base, rel, _ = write_pair(str(tmp_path), blocks=2, dim=32, full=True, dtype=torch.float32)
    out = str(tmp_path / "r.safetensors")
    assert main(["convert", rel, out, "--base", base, "--lora-rank", "4", "--report", str(tmp_path / "e.json")]) == 0
    rep = json.load(open(tmp_path / "e.json"))
    assert 0.5 < rep["total"]["rel_error"] < 1.0  # rank 4 of a full-rank change: most of it is lost, and said so
    assert "relative error of the LoRA: 0." in capsys.readouterr().out


def test_convert_refuses_bad_input_before_writing(tmp_path, capsys):
    base, rel, _ = write_pair(str(tmp_path), blocks=2, dim=32, dtype=torch.float32)
    out = tmp_path / "r.safetensors"

    def refused(args, text):
        assert main(["convert", rel, str(out)] + args) == 2
        assert text in capsys.readouterr().err
        assert not out.exists() and not (tmp_path / "r-lora.safetensors").exists()
    refused(["--lora-rank", "4"], "needs --base")
    other = {k: v for k, v in load_file(base).items() if "transformer_blocks.1." not in k}
    save_file(other, str(tmp_path / "short.safetensors"))
    refused(["--base", str(tmp_path / "short.safetensors")], "lacks")
    wide = dict(load_file(base))
    wide["transformer_blocks.0.attn.to_q.weight"] = torch.zeros(32, 48)
    save_file(wide, str(tmp_path / "wide.safetensors"))
    refused(["--base", str(tmp_path / "wide.safetensors")], "has shape [32, 48]")
    fp8 = dict(load_file(base))
    fp8["transformer_blocks.0.attn.to_q.scale_weight"] = torch.ones(1)
    save_file(fp8, str(tmp_path / "fp8.safetensors"))
    refused(["--base", str(tmp_path / "fp8.safetensors")], "quantized")
    refused(["--base", base, "--lora-rank", "0"], "at least 1")
    refused(["--base", base, "--lora-out", rel], "input file")


def test_extract_skips_unchanged_tensors(tmp_path):
    base, rel, _ = write_pair(str(tmp_path), blocks=1, dim=16, dtype=torch.float32)
    same = str(tmp_path / "same.safetensors")
    t = load_file(rel)
    t.update({k: v for k, v in load_file(base).items()})  # backbone = base: nothing learned
    save_file(t, same)
    rep = extract_lora(same, base, str(tmp_path / "l.safetensors"), 4).total()
    assert rep["layers"] == 0 and rep["diffs"] == 0 and rep["unchanged"] == len(block_shapes(16))


def test_memory_of_a_conversion_stays_under_twice_the_largest_tensor(tmp_path):
    """In a fresh process, converting 2 Qwen-Image-layout blocks: the bounds of devtools.convert_memory.check
    (tensor data alive at once under 2x the largest tensor; the process under that plus ~4 KiB a tensor and
    a fixed allowance for the sampled RSS noise).
    2 blocks, not 64: the torch profiler that measures the exact peak keeps a record of every operation,
    ~100 MB a block (64 blocks: 8 GB); `python -m devtools.convert_memory --blocks 64 --dim 128 --check` is
    the full-size benchmark (docs/checkpoints.md)."""
    out = subprocess.run([sys.executable, "-m", "devtools.convert_memory", "--blocks", "2", "--dim", "128",
                          "--rank", "16", "--dir", str(tmp_path), "--check"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=1800)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    r = json.loads(out.stdout[out.stdout.index("{"):out.stdout.rindex("}") + 1])
    assert r["blocks"] == 2 and r["report"]["layers"] == 2 * 14
    assert not check(r) and "the memory bounds hold" in out.stdout


def test_the_memory_check_catches_a_conversion_that_reads_whole_tensors():
    """What reading released + base + their float32 difference whole would add (~6x the largest bf16
    tensor) breaks both bounds at the test's size, noise allowance included."""
    ok = {"torch_x_largest": 1.76, "largest_tensor": 196608, "tensors": 136, "rss_anon": 999424}
    assert not check(ok)
    whole = {**ok, "torch_x_largest": 6.0, "rss_anon": ok["rss_anon"] + 4 * ok["largest_tensor"]}
    assert [b.split()[0] for b in check(whole)] == ["tensor", "anonymous"]


def test_a_damaged_release_is_refused(tmp_path):
    base, rel, _ = write_pair(str(tmp_path), blocks=1, dim=16, dtype=torch.float32)
    t = load_file(rel)
    t["transformer_blocks.0.attn.to_k.weight"][3, 4] = float("nan")
    save_file(t, str(tmp_path / "nan.safetensors"))
    with pytest.raises(Exception, match="NaN or Inf"):
        extract_lora(str(tmp_path / "nan.safetensors"), base, str(tmp_path / "l.safetensors"), 4)
    assert not os.path.exists(tmp_path / "l.safetensors") and not os.path.exists(tmp_path / "l.safetensors.data.partial")


def test_no_output_of_convert_may_name_an_input_or_overwrite_without_force(tmp_path, capsys, monkeypatch):
    """--report is an output like OUT and --lora-out: it may not name the release or the base (directly,
    through a symlink or a relative path), nor another output, and an existing file needs --force."""
    base, rel, _ = write_pair(str(tmp_path), blocks=1, dim=16, dtype=torch.float32)
    out, lora = tmp_path / "r.safetensors", tmp_path / "r-lora.safetensors"
    rel_bytes = open(rel, "rb").read()
    link = tmp_path / "link.json"
    link.symlink_to(rel)
    monkeypatch.chdir(tmp_path)

    def refused(args, text):
        assert main(["convert", rel, str(out), "--base", base, "--lora-rank", "2"] + args) == 2
        assert text in capsys.readouterr().err
        assert not out.exists() and not lora.exists()
        assert open(rel, "rb").read() == rel_bytes  # the release is untouched
    refused(["--report", rel], "is an input file")
    refused(["--report", str(link)], "is an input file")
    refused(["--report", os.path.relpath(base)], "is an input file")
    refused(["--report", str(out)], "is another output")
    refused(["--report", str(lora), "--force"], "is another output")
    (tmp_path / "old.json").write_text("keep me")
    refused(["--report", "old.json"], "exists; pass --force")
    assert (tmp_path / "old.json").read_text() == "keep me"
    assert main(["convert", rel, str(out), "--base", base, "--lora-rank", "2", "--report", "old.json", "--force"]) == 0
    assert json.load(open(tmp_path / "old.json"))["total"]["layers"] == 14


def test_a_failed_convert_writes_nothing(tmp_path, capsys):
    """All outputs or none: a LoRA folder that does not exist is refused before anything is written (the
    error names the user's path), a NaN found halfway leaves no router file, no LoRA, no report and no
    temp file, and files that --force would replace are kept as they were."""
    base, rel, _ = write_pair(str(tmp_path), blocks=1, dim=16, dtype=torch.float32)
    out, lora, report = tmp_path / "r.safetensors", tmp_path / "r-lora.safetensors", tmp_path / "e.json"
    before = set(os.listdir(tmp_path))
    missing = tmp_path / "no such folder" / "l.safetensors"
    assert main(["convert", rel, str(out), "--base", base, "--lora-rank", "2", "--lora-out", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing.parent) in err and "partial" not in err and "folder" in err
    assert set(os.listdir(tmp_path)) == before
    t = load_file(rel)
    t["transformer_blocks.0.txt_mlp.net.2.weight"][1, 2] = float("nan")  # the last weight: the routers came first
    save_file(t, str(tmp_path / "nan.safetensors"))
    before = set(os.listdir(tmp_path))
    args = ["--base", base, "--lora-rank", "2", "--report", str(report)]
    assert main(["convert", str(tmp_path / "nan.safetensors"), str(out)] + args) == 2
    assert "NaN or Inf" in capsys.readouterr().err
    assert set(os.listdir(tmp_path)) == before  # nothing written, no temp file left
    for p in (out, lora, report):
        p.write_text("old")
    assert main(["convert", str(tmp_path / "nan.safetensors"), str(out), "--force"] + args) == 2
    assert all(p.read_text() == "old" for p in (out, lora, report))
    for p in (out, lora, report):
        p.unlink()
    assert main(["convert", rel, str(out)] + args) == 0  # the failed runs left nothing in the way
    assert load_routers(out).meta.provenance["lora"] == "r-lora.safetensors" and lora.exists() and report.exists()


def test_a_write_error_names_the_output_not_its_temp_file(tmp_path):
    from elastic_core.checkpoint import CheckpointError
    from elastic_core.cli import _Staged
    out = str(tmp_path / "r.safetensors")
    with pytest.raises(CheckpointError) as e:
        with _Staged({"routers": out}) as tmp:
            w = StreamWriter(tmp["routers"])
            w.add("a", torch.ones(2))
            raise OSError(28, "No space left on device", tmp["routers"] + ".data.partial")
    assert str(e.value).startswith(f"{out}: could not be written (No space left on device)")
    assert "partial" not in str(e.value) and os.listdir(tmp_path) == []


def _file_error(base, rel, lora):
    """|| (released - base) - what the LoRA file adds || / || released - base ||, over the low-rank weights,
    measured on the file as written (its dtype)."""
    b, r, merged = load_file(base), load_file(rel), _merge(base, lora)
    keys = [k for k, v in b.items() if v.dim() == 2]
    err = sum(float(((r[k] - merged[k]) ** 2).sum()) for k in keys)
    return (err / sum(float(((r[k] - b[k]) ** 2).sum()) for k in keys)) ** 0.5


def test_the_reported_error_is_the_error_of_the_file_as_written(tmp_path, capsys):
    """A rank-2 difference at rank 4 is exact in fp32 factors; the default bf16 file is not, and the report,
    the printed line and the file's metadata say what the bf16 file holds."""
    base, rel, _ = write_pair(str(tmp_path), blocks=1, dim=16, delta_rank=2, dtype=torch.float32)
    for dtype, lo, hi in (("bf16", 1e-4, 2e-2), ("fp32", 0.0, 1e-5)):
        out, lora, report = (str(tmp_path / f"{dtype}{s}") for s in (".safetensors", "-lora.safetensors", ".json"))
        assert main(["convert", rel, out, "--base", base, "--lora-rank", "4", "--lora-dtype", dtype,
                     "--report", report]) == 0
        printed = capsys.readouterr().out
        true = _file_error(base, rel, lora)
        assert lo <= true <= hi, (dtype, true)
        rep = json.load(open(report))["total"]
        assert rep["rel_error"] == pytest.approx(true, rel=0.02, abs=1e-7), (dtype, rep, true)
        assert f"relative error of the LoRA: {rep['rel_error']:.4f}" in printed and f"({dtype})" in printed
        with safe_open(lora, "pt") as f:
            assert float(f.metadata()["rel_error"]) == pytest.approx(true, rel=0.02, abs=1e-7)


def test_the_rank_written_is_the_rank_the_file_holds_and_an_empty_lora_is_warned_of(tmp_path, capsys):
    base, rel, _ = write_pair(str(tmp_path), blocks=1, dim=16, full=True, dtype=torch.float32)
    lora = str(tmp_path / "r-lora.safetensors")
    assert main(["convert", rel, str(tmp_path / "r.safetensors"), "--base", base, "--lora-rank", "1000"]) == 0
    printed = capsys.readouterr()
    with safe_open(lora, "pt") as f:
        ranks = {f.get_tensor(k).shape[1] for k in f.keys() if k.endswith(".lora_up.weight")}
        assert f.metadata()["rank"] == str(max(ranks)) == "16"  # 16 x 16 and 16 x 64 weights hold rank 16 at most
    assert "LoRA rank 1000" not in printed.out and "LoRA rank 16" in printed.out and "full rank" in printed.out
    same = str(tmp_path / "same.safetensors")
    t = load_file(rel)
    t.update(load_file(base))  # the backbone is the base: nothing learned
    save_file(t, same)
    assert main(["convert", same, str(tmp_path / "s.safetensors"), "--base", base]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "empty" in err and "s-lora.safetensors" in err
