"""LoRA layers, their file in ComfyUI's format, and joint training with the routers (elastic_core.lora)."""
import json

import pytest
import torch
from safetensors import safe_open

from elastic_core.checkpoint import CheckpointError
from elastic_core.lora import (JointTrainer, LoraSet, LoraTarget, adapted, attach, check_layout, find_targets, merge,
                               read_lora_layout, save_lora, state_lora)
from elastic_core.train import RouterTrainer, TrainConfig, elastic_forward, distill_loss

from .helpers import inputs, make_stack


def _root(blocks):
    root = torch.nn.Module()
    root.blocks = torch.nn.ModuleList(blocks)
    return root


def _targets(blocks):
    return find_targets((f"blocks.{i}", b) for i, b in enumerate(blocks))


def test_targets_are_attention_and_mlp_linears_not_modulation():
    blocks, _ = make_stack(n=2)
    names = [t.path for t in _targets(blocks)]
    assert "blocks.0.img_qkv" in names and "blocks.1.txt_proj" in names and "blocks.0.img_mlp.2" in names
    assert not any("mod" in n for n in names) and len(names) == 2 * 8
    for n in ("double_blocks.0.img_mod.lin", "single_blocks.3.modulation.lin", "transformer_blocks.0.txt_mod.1",
              "blocks.2.mod", "layers.4.adaLN_modulation.0"):
        assert not adapted(n), n
    for n in ("double_blocks.0.img_attn.qkv", "single_blocks.0.linear1", "transformer_blocks.0.attn.to_out.0",
              "transformer_blocks.0.img_mlp.net.0.proj", "layers.4.attention.qkv", "layers.4.feed_forward.w3"):
        assert adapted(n), n


def test_rank_too_large_is_refused_naming_the_layer():
    t = [LoraTarget("a.qkv", 96, 32), LoraTarget("a.small", 8, 32)]
    with pytest.raises(ValueError, match=r"a\.small \(8 x 32\).*at most 8"):
        LoraSet(t, 9)
    with pytest.raises(ValueError, match="at least 1"):
        LoraSet(t, 0)
    assert LoraSet(t, 8).rank == 8


def test_new_lora_changes_nothing_and_merge_equals_parametrization():
    blocks, _ = make_stack(n=2)
    img, txt, vec = inputs()
    want = blocks[0](img, txt, vec)
    stack = _root(blocks)
    lora = LoraSet(_targets(blocks), 4, seed=1)
    attach(stack, lora)
    got = blocks[0](img, txt, vec)
    for a, b in zip(got, want):
        assert torch.equal(a, b)  # up starts at zero
    with torch.no_grad():
        for _, m in lora.items():
            m.up.normal_(0, 0.1)
    param = blocks[0](img, txt, vec, 0.5)  # width slicing reads the adapted weight
    w = stack.blocks[0].img_qkv.weight.detach().clone()
    merge(stack, lora)
    assert not hasattr(stack.blocks[0].img_qkv, "parametrizations")
    torch.testing.assert_close(stack.blocks[0].img_qkv.weight, w)
    for a, b in zip(blocks[0](img, txt, vec, 0.5), param):
        torch.testing.assert_close(a, b)


def test_file_round_trip_in_comfyui_layout(tmp_path):
    blocks, _ = make_stack(n=2)
    lora = LoraSet(_targets(blocks), 3, seed=2)
    with torch.no_grad():
        for _, m in lora.items():
            m.up.normal_()
    path = str(tmp_path / "x.safetensors")
    save_lora(path, lora, "flux", "x.safetensors", {"trainer": "test"})
    with safe_open(path, "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        assert f.get_tensor("diffusion_model.blocks.0.img_qkv.lora_up.weight").shape == (96, 3)
        assert f.get_tensor("diffusion_model.blocks.0.img_qkv.lora_down.weight").shape == (3, 32)
        assert f.get_tensor("diffusion_model.blocks.0.img_qkv.alpha").item() == 3.0
    assert len(keys) == 3 * len(lora.targets)
    assert meta["format"] == "elastic-dit-lora" and meta["router_file"] == "x.safetensors" and meta["rank"] == "3"
    layout, _ = read_lora_layout(path)
    check_layout(path, layout, lora.targets, 3)
    other = LoraSet(_targets(blocks), 3, seed=5)
    from safetensors.torch import load_file
    other.load_comfy_state(load_file(path), path)
    for (_, a), (_, b) in zip(lora.items(), other.items()):
        assert torch.equal(a.up, b.up) and torch.equal(a.down, b.down)
    with pytest.raises(CheckpointError, match="another rank"):
        check_layout(path, layout, lora.targets, 4)
    with pytest.raises(CheckpointError, match="a LoRA for another model"):
        check_layout(path, layout, _targets(make_stack(n=3)[0]), 3)


def _perf(blocks, routers, vec_seed=1):
    img, txt, vec = inputs(b=2, seed=vec_seed)
    with torch.no_grad():
        dense = [b(img, txt, vec) for b in blocks][-1]
        x = {"img": img, "txt": txt}
        for b in blocks:
            x = dict(zip(("img", "txt"), b(x["img"], x["txt"], vec)))
        dense = x["img"]

    def fn():
        fns = [lambda s, m, b=b: dict(zip(("img", "txt"), b(s["img"], s["txt"], vec, m))) for b in blocks]
        out, aux = elastic_forward(routers, fns, [b.hidden for b in blocks], {"img": img, "txt": txt}, vec, 0.5,
                                   lambda s: [s["txt"], s["img"]])
        return distill_loss(out["img"], dense), aux
    return fn


def test_joint_training_moves_lora_and_routers_and_resumes(tmp_path):
    blocks, routers = make_stack(n=3)
    stack = _root(blocks).requires_grad_(False)
    lora = LoraSet(_targets(blocks), 2, seed=0)
    attach(stack, lora)
    cfg = TrainConfig(steps=6, lr=1e-2, rho_g=0.3, rho_w=0.5)
    trainer = JointTrainer(routers, cfg, lora, 1e-2)
    assert [len(g["params"]) for g in trainer.opt.param_groups] == [len(list(routers.parameters())),
                                                                   2 * len(lora.targets)]
    trainer.fit(_perf(blocks, routers), steps=3)
    # the adapters learned (all but the last block's text layers, whose output nothing reads)
    assert all(m.up.abs().sum() > 0 for p, m in lora.items() if "img" in p or not p.startswith("blocks.2"))
    assert not any(p.requires_grad for n, p in stack.named_parameters() if "original" in n)
    path = str(tmp_path / "s.train_state")
    trainer.save(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    rank, targets = state_lora(meta)
    assert rank == 2 and targets == list(lora.targets)
    trainer.fit(_perf(blocks, routers), steps=2)
    after = {k: v.clone() for k, v in lora.state_dict().items()}
    # a fresh trainer resumed from step 3 and run 2 steps lands on the same adapters
    blocks2, routers2 = make_stack(n=3)
    stack2 = _root(blocks2).requires_grad_(False)
    lora2 = LoraSet(_targets(blocks2), 2, seed=7)
    attach(stack2, lora2)
    t2 = JointTrainer(routers2, cfg, lora2, 1e-2)
    t2.resume(path)
    assert t2.step == 3
    t2.fit(_perf(blocks2, routers2), steps=2)
    for k, v in after.items():
        torch.testing.assert_close(lora2.state_dict()[k], v, rtol=1e-5, atol=1e-7)
    assert state_lora({"step": "1"}) is None
    assert json.loads(meta["lora_targets"])[0][0] == "blocks.0.img_qkv"


def test_router_only_state_has_no_lora(tmp_path):
    blocks, routers = make_stack(n=2)
    t = RouterTrainer(routers, TrainConfig(steps=1))
    t.fit(_perf(blocks, routers), steps=1)
    t.save(str(tmp_path / "r.state"))
    with safe_open(str(tmp_path / "r.state"), "pt") as f:
        assert state_lora(f.metadata()) is None


def test_toy_study_runs_every_method_and_leaves_the_teacher_alone(tmp_path):
    """The toy-world study (elastic_core.toy_lora) in miniature, on the benchmark's quick size: each
    method trains a copy of the toy DiT against the untouched original and is measured at the compute
    target; a second run reads the trained models back from the cache; per-seed files merge."""
    from elastic_core import toy_lora
    from elastic_core.toy.benchmark import SIZES
    from elastic_core.toy.pipeline import load_dit
    before = {k: v.clone() for k, v in load_dit().state_dict().items()}
    q = SIZES["quick"]
    r = toy_lora.run(q.budget, q, ranks=(2,), seeds=(0,), targets=(0.5,), artifacts=str(tmp_path), log=lambda s: None)
    assert [row["method"] for row in r["rows"]] == ["routers only", "routers + LoRA r2, lr 0.0001", "end to end"]
    params = [row["trained_params"] for row in r["rows"]]
    assert params[0] == 0 < params[1] < params[2]
    for row in r["rows"]:
        computes = [p["compute"] for p in row["points"]]
        assert computes == sorted(computes) and 0 < computes[0] <= 0.5 <= computes[-1] <= 1.05  # 0.5 bracketed
        assert all(p["psnr"] > 5 and 0 < p["ssim"] <= 1 for p in row["points"])  # inf: identical to dense
        at = row["at"]["0.5"]
        assert min(p["psnr"] for p in row["points"]) <= at["psnr"] <= max(p["psnr"] for p in row["points"])
    for k, v in load_dit().state_dict().items():
        assert torch.equal(v, before[k]), k
    assert "routers + LoRA r2, lr 0.0001" in toy_lora.format_summary(r)
    again = toy_lora.run(q.budget, q, ranks=(2,), seeds=(1,), targets=(0.5,), methods=("lora",),
                         artifacts=str(tmp_path), log=lambda s: None)
    cached = toy_lora.run(q.budget, q, ranks=(2,), seeds=(1,), targets=(0.5,), methods=("lora",),
                          artifacts=str(tmp_path), log=lambda s: None)
    assert cached["rows"][0]["points"] == again["rows"][0]["points"]  # the cached LoRA model samples the same
    assert cached["rows"][0]["train_s"] < again["rows"][0]["train_s"]
    m = toy_lora.merge_results([r, again])
    assert m["seeds"] == [0, 1]
    lora = [s for s in m["summary"] if s["method"] == "routers + LoRA r2, lr 0.0001"][0]
    assert len(lora["psnr_per_seed"]) == 2 and lora["psnr_std"] >= 0


def test_resume_takes_the_new_learning_rates_and_keeps_adams_moments(tmp_path):
    """A resume keeps the routers, the LoRA, Adam's moments and the step; the learning rates are the
    resuming run's (both groups), not the saved ones."""
    blocks, routers = make_stack(n=2)
    lora = LoraSet(_targets(blocks), 2, seed=0)
    attach(_root(blocks).requires_grad_(False), lora)
    cfg = TrainConfig(steps=4, lr=1e-2)
    trainer = JointTrainer(routers, cfg, lora, 1e-2)
    trainer.fit(_perf(blocks, routers), steps=2)
    path = str(tmp_path / "s.train_state")
    trainer.save(path)
    ends = {}
    for lr, lora_lr in ((1e-2, 1e-2), (3e-2, 5e-3)):
        blocks2, routers2 = make_stack(n=2)
        lora2 = LoraSet(_targets(blocks2), 2, seed=7)
        attach(_root(blocks2).requires_grad_(False), lora2)
        t2 = JointTrainer(routers2, TrainConfig(steps=4, lr=lr), lora2, lora_lr)
        t2.resume(path)
        assert [g["lr"] for g in t2.opt.param_groups] == [lr, lora_lr]
        assert t2.step == 2 and t2.opt.state  # the moments came back
        t2.fit(_perf(blocks2, routers2), steps=1)
        ends[lr] = [p.detach().clone() for p in list(routers2.parameters()) + list(lora2.parameters())]
    assert any(not torch.equal(a, b) for a, b in zip(ends[1e-2], ends[3e-2]))
