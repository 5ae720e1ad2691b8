"""End to end against the authors' released code: their Qwen-Image DiT (blocks, routers, skip / width /
cache logic) and ComfyUI's QwenImage + this pack, on the same tiny weights and released-layout
routers, a 30-step CFG run each; the final latents must agree.

The authors' code is found beside the project ($ELASTIC_DIT_AUTHORS_PATH, else ~/comfy/Elastic-DiT);
the test skips, saying why, where it is absent or cannot be imported.
"""
import os

import pytest
import torch

STEPS, CFG, LAYERS = 30, 4.0, 4
# block 0 open (widths from its random width head), 1 always skipped, 2 and 3 in the reuse band
# [0.5, 0.515]: they cache from step 15 of 30, where both the released code and the pack start
GATES = [0.99, 0.01, 0.505, 0.505]


@pytest.fixture(scope="module")
def authors(comfy):
    from devtools import authors_ref
    path, how = authors_ref.find_authors()
    if path is None:
        pytest.skip(how)
    try:
        return authors_ref, authors_ref.load_module(path)
    except Exception as e:  # their module may need packages this environment lacks
        pytest.skip(f"the authors' {authors_ref.MODEL_FILE} at {path} does not import here: {e!r}")


@pytest.fixture(scope="module")
def case(comfy, authors, tmp_path_factory):
    """(tiny model, router checkpoint loaded by the pack, the authors' final latent)."""
    from comfy import sample as comfy_sample, samplers as comfy_samplers  # `comfy` is the fixture here
    from tests.comfy import tiny
    ar, mod = authors
    torch.manual_seed(0)
    model = tiny.build("qwen", seed=3, layers=LAYERS, std=0.1)
    dm = model.get_model_object("diffusion_model")
    state = ar.released_router_state(LAYERS, dm.txt_in.out_features, gates=GATES)
    path = ar.write_released(os.path.join(tmp_path_factory.mktemp("authors"), "e-dit.safetensors"), dm.state_dict(), state)
    ckpt = comfy[1].elastic_core.checkpoint.load_routers(path)
    lat = tiny.latent("qwen")
    sigmas = comfy_samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)
    pos, neg = tiny.conds("qwen", 1, 0, 8, dm.txt_in.in_features)
    trace = []
    x = ar.sample(ar.authors_dit(mod, dm, state), comfy_sample.prepare_noise(lat, 0)[:, :, 0], sigmas,
                  pos[0][0], neg[0][0], CFG, trace=trace)
    return model, ckpt, model.model.process_latent_out(x.unsqueeze(2)), trace


def _run(comfy, model, ckpt, steps=STEPS, **kw):
    from tests.comfy import elastic as el
    from tests.comfy import tiny
    patched = el.apply(comfy[0], model, ckpt, **kw)
    return tiny.sample(patched, "qwen", cfg=CFG, steps=steps), el.last_record(patched)


@pytest.fixture(scope="module")
def on(comfy, case):
    """The pack's run with the Apply node's defaults: (final latent, run record)."""
    return _run(comfy, case[0], case[1])


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_released_routers_run_with_the_authors_activation_by_default(comfy, case, on):
    model, ckpt, ref, trace = case
    assert ckpt.meta.mlp_activation == "quick_gelu"
    out, rec = on
    err = _rel(out, ref)
    print(f"[authors parity] ComfyUI + pack vs the authors' DiT, {STEPS} CFG steps: final latent {err:.2e} apart")
    assert err < 1e-5, err
    ec = comfy[1].elastic_core
    acts = set(rec.events["action"])
    assert {ec.stats.SKIP, ec.stats.RUN, ec.stats.REUSE} <= acts, "the run should skip, run and reuse blocks"
    widths = {w for a, w in zip(rec.events["action"], rec.events["width"]) if a == ec.stats.RUN}
    assert len(widths & {0.25, 0.5, 0.75}) >= 1 and 1.0 in widths, widths
    # the authors' side made the same gate decisions: one (p, width) per block call, 2 calls a step
    skipped = sum(p < 0.5 for p, _ in trace)
    assert skipped == sum(a == ec.stats.SKIP for a in rec.events["action"]), skipped


def test_switch_off_runs_comfyuis_activation(comfy, case, on):
    model, ckpt, ref, _ = case
    off, rec = _run(comfy, model, ckpt, authors_activation=False)
    err_off, err_on = _rel(off, ref), _rel(on[0], ref)
    print(f"[authors parity] authors_activation off: {err_off:.2e} from the authors' latent (on: {err_on:.2e})")
    assert err_off > 100 * max(err_on, 1e-7), (err_off, err_on)
    assert err_off < 0.05, err_off  # same decisions, only the activation differs


def test_unpatched_model_keeps_its_own_activation(comfy, case):
    """The twins live on the clone: the user's MODEL samples as before the Apply node."""
    from tests.comfy import tiny
    model, ckpt, _, _ = case
    before = tiny.sample(model, "qwen", cfg=CFG, steps=2)
    _run(comfy, model, ckpt, steps=2)
    assert torch.equal(tiny.sample(model, "qwen", cfg=CFG, steps=2), before)
