"""The ComfyUI path equals elastic_core's runner on the same weights and inputs, decisions included.

At step 0 the first block sees the same input with or without elastic blocks. From there, elastic_core's
`run_stack` drives ComfyUI's own block modules; the ComfyUI run drives them through the hook. Both must
make the same decisions and produce the same double-stack output.
"""
import pytest
import torch


@pytest.fixture(scope="module")
def env(comfy):
    from tests.comfy import elastic, tiny
    return comfy[0], comfy[1], tiny, elastic


def _capture(model, hook_key, keys):
    """Wrap an existing patch (or the plain block) at hook_key, recording args and/or outputs."""
    seen = []
    dit = model.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    inner = dit.get(hook_key)

    def rec(args, extra):
        before = {k: args[k].clone() for k in keys if not k.startswith("out_")}  # Flux blocks add in place
        out = inner(args, extra) if inner is not None else extra["original_block"](args)
        seen.append({**before, **{k: out[k[4:]].clone() for k in keys if k.startswith("out_")}})
        return out
    model.set_model_patch_replace(rec, "dit", *hook_key)
    return seen


def _block_fn(kind, blk, vec, pe):
    def run(x, rows, width):
        v = vec if rows is None else vec.index_select(0, rows)
        p = pe if rows is None or pe.shape[0] == 1 else pe.index_select(0, rows)
        if kind == "qwen":
            txt, img = blk(hidden_states=x["img"], encoder_hidden_states=x["txt"], encoder_hidden_states_mask=None,
                           temb=v, image_rotary_emb=p)
        else:
            img, txt = blk(img=x["img"].clone(), txt=x["txt"].clone(), vec=v, pe=p)
        return {"img": img, "txt": txt}
    return run


@pytest.mark.parametrize("kind", ["qwen", "flux"])
def test_comfy_path_equals_core_runner(env, kind):
    nodes, pack, tiny, el = env
    ec = pack.elastic_core
    model = tiny.build(kind, seed=3) if kind == "flux" else tiny.build(kind, seed=3, layers=6)
    dm = model.get_model_object("diffusion_model")
    refs = [r for r in pack.nodes.adapters.adapter_for(dm).blocks(dm) if r.hook == "double_block"]
    ckpt = el.make_routers(pack, model, seed=5)
    with torch.no_grad():  # random gate heads around tau: a mix of skips and runs
        for i, r in enumerate(ckpt.routers):
            r.out[2].weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(i))
            r.out[2].bias.fill_(0.3 * (-1) ** i)
    plain = model.clone()
    first = _capture(plain, ("double_block", 0), ("img", "txt", "vec", "pe"))
    tiny.sample(plain, kind, steps=2)
    patched = el.apply(nodes, model, ckpt, cache=False, adapt_width=False)
    last = _capture(patched, ("double_block", len(refs) - 1), ("out_img", "out_txt"))
    tiny.sample(patched, kind, steps=2)
    comfy_rec = el.last_record(patched)

    x = first[0]
    specs = [r.spec for r in pack.nodes.adapters.adapter_for(dm).blocks(dm)]
    run = ec.runner.ElasticRun(ckpt.routers, specs, ec.policy.Policy(ec.config.ElasticConfig(cache=False, width=False)), 2)
    run.begin_step(0, None, False)
    blocks = [_block_fn(kind, dm.get_submodule(r.path), x["vec"], x["pe"]) for r in refs]
    with torch.no_grad():
        out = ec.runner.run_stack(run, blocks, {"img": x["img"], "txt": x["txt"]}, x["vec"],
                                  row_keys=[("uncond", 0), ("cond", 0)],
                                  router_tokens=lambda s: [s["txt"], s["img"]])
    core_rec = run.finish()

    n = len(core_rec)
    step0 = [j for j, s in enumerate(comfy_rec.events["step"]) if s == 0 and comfy_rec.events["block"][j] < len(refs)]
    assert len(step0) == n
    for col in ("block", "sample", "action", "width"):
        assert [comfy_rec.events[col][j] for j in step0] == core_rec.events[col], col
    assert [comfy_rec.streams[comfy_rec.events["stream"][j]] for j in step0] == \
        [core_rec.streams[s] for s in core_rec.events["stream"]]
    assert torch.allclose(torch.tensor([comfy_rec.events["p"][j] for j in step0]), torch.tensor(core_rec.events["p"]),
                          atol=1e-5)
    acts = set(core_rec.events["action"])
    assert acts == {ec.stats.SKIP, ec.stats.RUN}, "the routers should both skip and run blocks"
    assert torch.allclose(last[0]["out_img"], out["img"], atol=1e-5)
    assert torch.allclose(last[0]["out_txt"], out["txt"], atol=1e-5)
