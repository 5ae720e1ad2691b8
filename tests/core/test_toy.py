"""The toy world and the toy DiT: complexity is a real dial, the model is a working rectified flow."""
import json
import os

import numpy as np
import pytest
import torch

from elastic_core.toy.model import ToyConfig, ToyDiT, flow_loss, sample
from elastic_core.toy.world import PAD, WorldSpec, batch


def test_complexity_adds_objects_and_detail():
    rng = np.random.default_rng(0)
    imgs_lo, toks_lo, _ = batch(16, rng, complexity=0.0)
    imgs_hi, toks_hi, _ = batch(16, rng, complexity=1.0)
    n_lo, n_hi = (toks_lo != PAD).sum(1), (toks_hi != PAD).sum(1)
    assert (n_lo == 7).all() and (n_hi == WorldSpec().tokens).all()  # 1 vs 6 objects, 6 tokens each + background
    detail = lambda x: np.abs(np.diff(x, axis=-1)).mean()  # noqa: E731
    assert detail(imgs_hi) > 2 * detail(imgs_lo)
    assert imgs_lo.shape == (16, 3, 32, 32) and -1 <= imgs_hi.min() and imgs_hi.max() <= 1


def test_toy_dit_starts_as_identity_and_learns():
    torch.manual_seed(0)
    cfg = ToyConfig(dim=32, heads=2, depth=12)
    m = ToyDiT(cfg)
    assert len(m.blocks) >= 12 and len(m.specs()) == 12
    x, tok, _ = (torch.from_numpy(a) for a in batch(8, np.random.default_rng(1)))
    img, txt, vec = m.embed(x, torch.rand(8), tok)
    blk_out = m.blocks[0](img, txt, vec)
    assert torch.equal(blk_out[0], img)  # adaLN-zero init
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = flow_loss(m, x, tok, g).item()
    for _ in range(30):
        loss = flow_loss(m, x, tok, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first
    out = sample(lambda xt, t, i: m(xt, t, tok), torch.randn(8, 3, 32, 32), steps=3)
    assert out.shape == x.shape and torch.isfinite(out).all()


# -- the shipped toy model, the demo and the ablation's parts -----------------------------------------

def test_shipped_toy_files_load_and_match():
    from elastic_core.toy import pipeline as P
    model, ckpt = P.load_dit(), P.load_toy_routers()
    assert len(model.blocks) >= 12 and ckpt.meta.family == P.FAMILY
    assert list(ckpt.routers.block_names) == [s.name for s in model.specs()]
    assert (ckpt.meta.rho_g, ckpt.meta.rho_w) == (0.5, 0.6)
    total = sum(os.path.getsize(p) for p in (P.DIT_FILE, P.ROUTER_FILE))
    assert total < 10 * 2 ** 20, f"the shipped toy files are {total / 2 ** 20:.1f} MiB"


def test_demo_quick_form_runs_and_writes_its_files(tmp_path):
    from elastic_core.cli import main
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    r = json.loads((out / "demo.json").read_text())
    assert len(r["rows"]) == 3
    for row in r["rows"]:
        assert 0.0 < row["executed_fraction"] < 1.0 and row["wall_speedup"] > 0 and row["psnr_db"] > 5
    for name in ("grid.png", "heatmap.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics():
    from elastic_core.toy.metrics import psnr, spearman, ssim
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    assert ssim(a, a) == pytest.approx(1.0) and 0.0 < ssim(a, b) < 1.0
    assert psnr(a, b) > psnr(a, -a) and psnr(a, a) == float("inf")
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [5, 5, 5]) == 0.0


def test_static_plan_meets_the_compute_target():
    from elastic_core.toy.ablation import static_plan
    from elastic_core.toy.model import ToyConfig, ToyDiT
    model = ToyDiT(ToyConfig(depth=12))
    drop, width, frac = static_plan(model, 0.5, (0.25, 0.5, 0.75, 1.0))
    assert abs(frac - 0.5) < 0.05 and 0 not in drop and 11 not in drop
    assert static_plan(model, 1.0, (0.25, 0.5, 0.75, 1.0))[:2] == (set(), 1.0)


def test_first_block_cache_threshold_trades_compute():
    from elastic_core.toy.ablation import first_block_cache
    from elastic_core.toy.model import ToyConfig, ToyDiT
    torch.manual_seed(0)
    model = ToyDiT(ToyConfig(depth=4)).eval()
    for blk in model.blocks:  # not the identity init, so block 0's residual changes with the step
        torch.nn.init.normal_(blk.img_mod.weight, std=0.05)
    tok = torch.zeros(1, model.cfg.tokens, dtype=torch.long)
    noise = torch.randn(1, 3, model.cfg.image, model.cfg.image)
    _, never = first_block_cache(model, tok, noise, 6, 0.0)
    _, always = first_block_cache(model, tok, noise, 6, 1e9)
    assert never == 1.0
    assert always == pytest.approx((4 + 5 * 1) / (4 * 6))  # the first step runs all, then only block 0


def test_toy_ablation_runs_at_a_small_size():
    from elastic_core.toy.ablation import format_ablation, run_ablation
    r = run_ablation(samples=3, steps=4)
    rows = {x["method"]: x for x in r["table"]}
    assert list(rows)[0] == "dense" and len(rows) == 6
    assert rows["dense"]["compute"] == 1.0 and rows["dense"]["ssim"] == pytest.approx(1.0)
    full = rows["E-DiT: skip + width + cache"]["compute"]
    assert 0.0 < full < rows["E-DiT: skip only"]["compute"] <= 1.0
    for name in ("static (same compute)", "first-block cache (same compute)"):  # matched to the full method
        assert abs(rows[name]["compute"] - full) < 0.15, (name, rows[name]["compute"], full)
    assert -1.0 <= r["spearman_compute_complexity"] <= 1.0 and len(r["skip_rate_per_block"]) == 12
    assert "Spearman" in format_ablation(r)


def test_train_command_both_modes_and_resume(tmp_path):
    from elastic_core.cli import main
    from elastic_core.checkpoint import load_routers
    from elastic_core.toy import pipeline as P
    out = str(tmp_path / "r.safetensors")
    assert main(["train", "--steps", "2", "--out", out, "--grad-checkpoint"]) == 0
    assert main(["train", "--steps", "3", "--out", out, "--resume", out + ".state"]) == 0  # goes on to step 3
    from safetensors import safe_open
    with safe_open(out + ".state", "pt") as f:
        assert f.metadata()["step"] == "3"
    assert load_routers(out).meta.family == P.FAMILY
    e2e = str(tmp_path / "e.safetensors")
    assert main(["train", "--steps", "2", "--out", e2e, "--end-to-end"]) == 0
    tuned, shipped = P.load_dit(str(tmp_path / "e.dit.safetensors")), P.load_dit()
    assert any(not torch.allclose(a, b, atol=1e-3) for a, b in zip(tuned.state_dict().values(), shipped.state_dict().values()))


def test_train_command_ctrl_c_saves_what_was_trained(tmp_path):
    """Ctrl-C (SIGINT) while training: the step finishes, routers and state are saved, exit 0."""
    import signal
    import subprocess
    import sys
    out = str(tmp_path / "r.safetensors")
    proc = subprocess.Popen([sys.executable, "-m", "elastic_core.cli", "train", "--steps", "100000", "--out", out],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    lines = []
    for line in proc.stdout:  # the first progress line: training is under way
        lines.append(line)
        if line.startswith("step"):
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    text = "".join(lines) + rest
    assert proc.returncode == 0, text
    assert "stopped at step" in text and os.path.isfile(out) and os.path.isfile(out + ".state"), text
