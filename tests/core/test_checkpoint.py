"""Router checkpoint IO: our format round trip, the authors' released layout, and every bad input."""
import json
import math
import os
import pickle
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from elastic_core import checkpoint as ck
import elastic_core.st_file
from elastic_core.checkpoint import (RELEASED_DEFAULTS, CheckpointError, RouterMeta, describe, has_released_routers,
                                     import_released, load_routers, save_routers)
from elastic_core.config import ElasticConfig, RouterConfig
from elastic_core.router import RouterSet

D, H, N = 32, 8, 3
SUBKEYS = ("img_mod.1.weight", "img_mod.1.bias", "out.0.weight", "out.0.bias", "out.2.weight", "out.2.bias",
           "width_head.weight", "width_head.bias")


# -- builders (also used by test_cli) -------------------------------------------------------------

def make_routers(n=N, dim=D, hidden=H, cond_dim=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    routers = RouterSet(RouterConfig(dim, cond_dim=cond_dim, hidden=hidden), [f"double_blocks.{i}" for i in range(n)])
    with torch.no_grad():
        for p in routers.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return routers.to(dtype)


def make_meta(routers, **kw):
    kw = {"defaults": {"tau": 0.4, "delta": 0.02, "max_reuse": 3, "cache_start": 0.3, "cache_end": 0.9},
          "rho_g": 0.6, "rho_w": 0.65, "provenance": {"trainer": "test", "date": "2025-01-01"}} | kw
    return RouterMeta.for_routers(routers, "flux", **kw)


def write_ours(path, routers=None, tensors=None, metadata=None):
    """Our format, with tensors / metadata edited by the callables given."""
    routers = routers if routers is not None else make_routers()
    t, md = ck._encode(routers, make_meta(routers))
    save_file(tensors(t) if tensors else t, str(path), metadata=metadata(md) if metadata else md)
    return path


def released_tensors(n=N, dim=D, hidden=H, prefix="", seed=0):
    """A tiny full Qwen-Image DiT: backbone keys plus the routers under gate_mlps."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"img_mod.1.weight": (3 * dim, dim), "img_mod.1.bias": (3 * dim,), "out.0.weight": (hidden, dim),
              "out.0.bias": (hidden,), "out.2.weight": (1, hidden), "out.2.bias": (1,),
              "width_head.weight": (4, hidden), "width_head.bias": (4,)}
    t = {}
    for i in range(n):
        t[f"{prefix}transformer_blocks.{i}.img_mod.1.weight"] = torch.randn(6 * dim, dim, generator=g)
        t[f"{prefix}transformer_blocks.{i}.attn.to_q.weight"] = torch.randn(dim, dim, generator=g)
        for sub, shape in shapes.items():
            t[f"{prefix}gate_mlps.{i}.{sub}"] = torch.randn(shape, generator=g)
    t[f"{prefix}img_in.weight"] = torch.randn(dim, 16, generator=g)
    return t


def write_released(path, edit=None, **kw):
    t = released_tensors(**kw)
    save_file(edit(t) if edit else t, str(path), metadata={"format": "pt"})  # what torch-side savers write
    return path


def raises(path, *words, fn=load_routers):
    with pytest.raises(CheckpointError) as e:
        fn(path)
    msg = str(e.value)
    assert os.path.basename(str(path)) in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg


@pytest.fixture
def reads(monkeypatch):
    """Record every key get_tensor reads through checkpoint's safe_open."""
    keys = []

    class Recording:
        def __init__(self, *a, **kw):
            self.f = safe_open(*a, **kw)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def get_tensor(self, key):
            keys.append(key)
            return self.inner.get_tensor(key)

    monkeypatch.setattr(elastic_core.st_file, "safe_open", Recording)  # where router files' tensors are read
    return keys


# -- our format -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cond_dim,dtype", [(None, torch.float32), (16, torch.float32), (None, torch.bfloat16)])
def test_round_trip(tmp_path, cond_dim, dtype):
    routers, path = make_routers(cond_dim=cond_dim, dtype=dtype), tmp_path / "r.safetensors"
    meta = make_meta(routers)
    save_routers(path, routers, meta)
    ck_ = load_routers(path)
    assert ck_.meta == meta and ck_.path == str(path)
    want, got = routers.state_dict(), ck_.routers.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert got[k].dtype == dtype and torch.equal(got[k], want[k]), k
    g = torch.Generator().manual_seed(5)
    x, c = torch.randn(2, 7, D, generator=g), torch.randn(2, routers.config.cond, generator=g)
    for a, b in zip(routers.routers, ck_.routers.routers):
        oa, ob = a(x, c), b(x, c)
        assert torch.equal(oa.gate_logit, ob.gate_logit) and torch.equal(oa.width_logits, ob.width_logits)


def test_saved_metadata(tmp_path):
    path = tmp_path / "r.safetensors"
    routers = make_routers()
    save_routers(path, routers, make_meta(routers))
    with safe_open(str(path), "pt") as f:
        md, keys = f.metadata(), set(f.keys())
    assert md["format"] == "elastic-dit-router" and md["format_version"] == "1" and md["family"] == "flux"
    assert json.loads(md["blocks"])[1] == {"name": "double_blocks.1", "dim": D, "cond_dim": D}
    assert md["router_hidden"] == str(H) and json.loads(md["widths"]) == [0.25, 0.5, 0.75, 1.0]
    assert json.loads(md["targets"]) == {"rho_g": 0.6, "rho_w": 0.65}
    assert keys == {f"routers.{i}.{s}" for i in range(N) for s in SUBKEYS}
    assert not os.path.exists(str(path) + ".partial")


def test_meta_defaults_and_checks():
    routers = make_routers()
    cfg = make_meta(routers).elastic_config()
    assert cfg == ElasticConfig(tau=0.4, delta=0.02, max_reuse=3, cache_start=0.3, cache_end=0.9)
    assert RouterMeta.for_routers(routers, "flux").elastic_config() == ElasticConfig()
    with pytest.raises(ValueError, match="not ElasticConfig fields"):
        make_meta(routers, defaults={"tau": 0.5, "threshold": 1})
    with pytest.raises(ValueError, match="must match"):
        save_routers("unused.safetensors", routers, make_meta(make_routers(n=2)))


def test_describe(tmp_path):
    routers = make_routers()
    with torch.no_grad():
        routers[1].out[2].bias.fill_(math.log(0.7 / 0.3))
        routers[1].width_head.bias.copy_(torch.tensor([0.0, 3.0, 0.0, 1.0]))
    path = tmp_path / "r.safetensors"
    save_routers(path, routers, make_meta(routers))
    info = describe(load_routers(path))
    assert (info["family"], info["blocks"], info["dim"], info["cond_dim"], info["hidden"]) == ("flux", N, D, D, H)
    assert info["block_names"] == list(routers.block_names) and info["widths"] == [0.25, 0.5, 0.75, 1.0]
    assert info["targets"] == {"rho_g": 0.6, "rho_w": 0.65} and info["provenance"]["trainer"] == "test"
    b = info["per_block"][1]
    assert b["name"] == "double_blocks.1" and b["p_open"] == pytest.approx(0.7) and b["preferred_width"] == 0.5
    json.dumps(info)  # JSON-ready


# -- the authors' released layout -----------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "dit."])
def test_import_released_reads_only_routers(tmp_path, reads, prefix):
    path = write_released(tmp_path / "model.safetensors", prefix=prefix)
    written = released_tensors(prefix=prefix)
    ckpt = import_released(path)
    assert sorted(reads) == sorted(k for k in written if "gate_mlps." in k)  # no backbone tensor read
    got = ckpt.routers.state_dict()
    for i in range(N):
        for s in SUBKEYS:
            assert torch.equal(got[f"routers.{i}.{s}"], written[f"{prefix}gate_mlps.{i}.{s}"])
    m = ckpt.meta
    assert m.family == "qwen_image" and m.block_names == tuple(f"transformer_blocks.{i}" for i in range(N))
    assert m.router == RouterConfig(D, hidden=H) and m.defaults == RELEASED_DEFAULTS
    assert m.elastic_config() == ElasticConfig() and m.provenance["source"] == "model.safetensors"


def test_load_routers_dispatches_released(tmp_path):
    path = write_released(tmp_path / "model.safetensors", prefix="model.diffusion_model.")
    assert load_routers(path).meta.family == "qwen_image"


def test_has_released_routers(tmp_path):
    assert has_released_routers(write_released(tmp_path / "a.safetensors", prefix="dit."))
    assert not has_released_routers(write_ours(tmp_path / "ours.safetensors"))
    plain = write_released(tmp_path / "plain.safetensors", edit=lambda t: {k: v for k, v in t.items() if "gate" not in k})
    assert not has_released_routers(plain)
    assert not has_released_routers(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    assert not has_released_routers(tmp_path / "junk.safetensors")


def test_released_file_as_model_and_ours_refused_by_import(tmp_path):
    raises(write_ours(tmp_path / "ours.safetensors"), "already", fn=import_released)


# -- bad files: the file --------------------------------------------------------------------------

def test_missing_file(tmp_path):
    raises(tmp_path / "nope.safetensors", "not found")


@pytest.mark.parametrize("ext", [".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"])
def test_pickle_extension_refused(tmp_path, ext):
    path = tmp_path / f"routers{ext}"
    torch.save({"a": torch.zeros(1)}, path)
    raises(path, "pickle files are not loaded", "run code", "convert it to .safetensors")


@pytest.mark.parametrize("kind", ["zip", "raw"])
def test_pickle_content_refused(tmp_path, kind):
    path = tmp_path / "routers.safetensors"
    if kind == "zip":
        torch.save({"a": torch.zeros(1)}, path)
    else:
        path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    raises(path, "pickle", "run code", "convert it to .safetensors")


def test_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    path = tmp_path / "r.safetensors"
    for pad in range(256):  # grow the header until its length's first byte is 0x80
        write_ours(path, metadata=lambda m: m | {"notes": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert len(load_routers(path).routers) == N


def test_not_safetensors(tmp_path):
    (tmp_path / "a.safetensors").write_text("this is a text file, not a tensor file")
    raises(tmp_path / "a.safetensors", "not a safetensors file", "header length", "larger than the file")
    (tmp_path / "b.safetensors").write_bytes(b"abc")
    raises(tmp_path / "b.safetensors", "not a safetensors file", "too short")


def test_corrupt_header(tmp_path):
    text = b'{"routers.0.out.0.weight": {"dtype": "F32", '
    (tmp_path / "a.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 64)
    raises(tmp_path / "a.safetensors", "corrupt header", "not valid JSON")
    text = b'{"k": {"dtype": "F32", "shape": [2]}}'
    (tmp_path / "b.safetensors").write_bytes(struct.pack("<Q", len(text)) + text)
    raises(tmp_path / "b.safetensors", "corrupt safetensors header", "'k'", "data_offsets")


def test_truncated_detected_before_reading(tmp_path, reads):
    path = write_ours(tmp_path / "r.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    raises(path, "truncated", f"only {len(data) - 10 - 8 - struct.unpack('<Q', data[:8])[0]} bytes")
    assert reads == []


# -- bad files: our format ------------------------------------------------------------------------

def test_unknown_format(tmp_path):
    path = write_ours(tmp_path / "r.safetensors", metadata=lambda md: md | {"format": "someone-elses"})
    raises(path, "unknown format", "'someone-elses'", "elastic-dit-router")


def test_unsupported_version(tmp_path):
    path = write_ours(tmp_path / "r.safetensors", metadata=lambda md: md | {"format_version": "3"})
    raises(path, "unsupported format_version", "'3'", "format_version 1, 2")


def test_missing_key(tmp_path):
    path = write_ours(tmp_path / "r.safetensors", tensors=lambda t: {k: v for k, v in t.items() if k != "routers.1.out.0.bias"})
    raises(path, "missing", "'routers.1.out.0.bias'", "block 'double_blocks.1'")


@pytest.mark.parametrize("extra", ["routers.0.extra.weight", f"routers.{N}.out.2.bias", "ema.step"])
def test_unexpected_key(tmp_path, extra):
    path = write_ours(tmp_path / "r.safetensors", tensors=lambda t: t | {extra: torch.zeros(1)})
    raises(path, "unexpected key", repr(extra))


def test_wrong_shape(tmp_path):
    path = write_ours(tmp_path / "r.safetensors", tensors=lambda t: t | {"routers.2.out.0.weight": torch.zeros(H, D - 1)})
    raises(path, "wrong shape", "'routers.2.out.0.weight'", f"[{H}, {D - 1}]", f"expected [{H}, {D}]")


def test_different_dims_across_blocks(tmp_path):
    def md(m):
        blocks = json.loads(m["blocks"])
        blocks[2]["dim"] = 48
        return m | {"blocks": json.dumps(blocks)}
    raises(write_ours(tmp_path / "r.safetensors", metadata=md), "different dims across blocks", "'double_blocks.2'")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite(tmp_path, bad):
    def edit(t):
        w = t["routers.1.width_head.weight"].clone()
        w[2, 3] = bad
        return t | {"routers.1.width_head.weight": w}
    raises(write_ours(tmp_path / "r.safetensors", tensors=edit), "NaN or Inf", "'routers.1.width_head.weight'")


def test_non_float_dtype(tmp_path):
    path = write_ours(tmp_path / "r.safetensors", tensors=lambda t: t | {"routers.0.out.2.bias": torch.ones(1, dtype=torch.int32)})
    raises(path, "non-float dtype", "I32", "'routers.0.out.2.bias'")


@pytest.mark.parametrize("key", ["blocks", "defaults", "provenance"])
def test_metadata_not_json(tmp_path, key):
    path = write_ours(tmp_path / "r.safetensors", metadata=lambda m: m | {key: "[not json"})
    raises(path, f"metadata '{key}'", "does not parse as JSON")


def test_missing_metadata_key(tmp_path):
    path = write_ours(tmp_path / "r.safetensors", metadata=lambda m: {k: v for k, v in m.items() if k != "widths"})
    raises(path, "missing metadata key 'widths'")


def test_widths_count_mismatch(tmp_path):
    path = write_ours(tmp_path / "r.safetensors", metadata=lambda m: m | {"widths": "[0.5, 1.0]"})
    raises(path, "widths count mismatch", "'routers.0.width_head.weight'", "4 rows", "2 widths")


def test_invalid_metadata_value(tmp_path):
    path = write_ours(tmp_path / "r.safetensors", metadata=lambda m: m | {"activation": "tanh"})
    raises(path, "invalid metadata", "activation")


# -- bad files: the released layout ---------------------------------------------------------------

def test_plain_model_file(tmp_path):
    path = write_released(tmp_path / "qwen.safetensors", edit=lambda t: {k: v for k, v in t.items() if "gate_mlps" not in k})
    for fn in (load_routers, import_released):
        raises(path, "holds no E-DiT routers; it is a plain model file", fn=fn)


def test_released_index_gap(tmp_path):
    path = write_released(tmp_path / "m.safetensors", n=4, edit=lambda t: {k: v for k, v in t.items() if "gate_mlps.2." not in k})
    raises(path, "gaps", "[2]", fn=import_released)


def test_released_missing_key(tmp_path):
    path = write_released(tmp_path / "m.safetensors", edit=lambda t: {k: v for k, v in t.items() if k != "gate_mlps.1.out.2.bias"})
    raises(path, "missing", "'gate_mlps.1.out.2.bias'", "block 'transformer_blocks.1'", fn=import_released)


def test_released_unexpected_router_key(tmp_path):
    path = write_released(tmp_path / "m.safetensors", edit=lambda t: t | {"gate_mlps.0.norm.weight": torch.ones(D)})
    raises(path, "unexpected key", "'gate_mlps.0.norm.weight'", fn=import_released)


def test_released_wrong_shape(tmp_path):
    path = write_released(tmp_path / "m.safetensors", prefix="dit.", edit=lambda t: t | {"dit.gate_mlps.2.out.2.weight": torch.zeros(2, H)})
    raises(path, "wrong shape", "'dit.gate_mlps.2.out.2.weight'", f"[2, {H}]", f"expected [1, {H}]", fn=import_released)


def test_released_different_dims(tmp_path):
    wide = released_tensors(dim=48, seed=1)
    path = write_released(tmp_path / "m.safetensors", edit=lambda t: t | {k: v for k, v in wide.items() if "gate_mlps.1." in k})
    raises(path, "different dims across blocks", "'transformer_blocks.1'", fn=import_released)


def test_released_width_rows(tmp_path):
    path = write_released(tmp_path / "m.safetensors", edit=lambda t: t | {"gate_mlps.0.width_head.weight": torch.zeros(5, H)})
    raises(path, "widths count mismatch", "5 rows", "4 widths", fn=import_released)


def test_released_non_finite(tmp_path):
    def edit(t):
        b = t["gate_mlps.2.img_mod.1.bias"].clone()
        b[0] = float("nan")
        return t | {"gate_mlps.2.img_mod.1.bias": b}
    raises(write_released(tmp_path / "m.safetensors", edit=edit), "NaN or Inf", "'gate_mlps.2.img_mod.1.bias'")


@pytest.mark.parametrize("value,words", [("nan", ("ln_eps", "finite")), ("-1", ("ln_eps", "> 0")),
                                         ("inf", ("ln_eps", "finite")), ("abc", ("ln_eps", "number"))])
def test_bad_ln_eps_refused(tmp_path, value, words):
    path = write_ours(tmp_path / "r.safetensors", metadata=lambda md: {**md, "ln_eps": value})
    raises(path, *words)


@pytest.mark.parametrize("defaults,word", [({"max_reuse": 2.5}, "max_reuse"), ({"max_reuse": True}, "max_reuse"),
                                           ({"tau": float("nan")}, "tau"), ({"skip": "yes"}, "skip"),
                                           ({"delta": "0.1"}, "delta")])
def test_bad_defaults_refused(tmp_path, defaults, word):
    path = write_ours(tmp_path / "r.safetensors",
                      metadata=lambda md: {**md, "defaults": json.dumps({**json.loads(md["defaults"]), **defaults})})
    raises(path, "invalid metadata", word)


@pytest.mark.parametrize("target", [float("nan"), 1.5, "0.5"])
def test_bad_targets_refused(tmp_path, target):
    path = write_ours(tmp_path / "r.safetensors", metadata=lambda md: {**md, "targets": json.dumps({"rho_g": target})})
    raises(path, "invalid metadata", "rho_g")


def test_header_over_the_safetensors_limit_says_so(tmp_path):
    path = tmp_path / "big.safetensors"
    n = elastic_core.st_file._MAX_HEADER + 8
    with open(path, "wb") as f:  # a sparse file larger than its header, so the size check passes
        f.write(struct.pack("<Q", n) + b"{")
        f.seek(n + 64)
        f.write(b"\0")
    msg = raises(path, "exceeds", "100 MiB")
    assert "larger than the file" not in msg


# -- the compact layout (format version 2) ----------------------------------------------------------

def make_compact(n=N, dim=D, rank=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    routers = RouterSet(RouterConfig(dim, hidden=H, mod_rank=rank), [f"double_blocks.{i}" for i in range(n)])
    with torch.no_grad():
        for p in routers.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return routers


def test_compact_round_trip(tmp_path):
    routers = make_compact()
    path = tmp_path / "c.safetensors"
    save_routers(path, routers, make_meta(routers))
    md = ck.read_header(str(path)).metadata
    assert (md["format_version"], md["router_layout"], md["mod_rank"]) == ("2", "compact", "4")
    back = load_routers(path)
    assert back.meta.router == routers.config and back.meta.router.layout == "compact"
    for k, v in routers.state_dict().items():
        assert torch.equal(back.routers.state_dict()[k], v), k
    x, c = torch.randn(2, 5, D), torch.randn(2, D)
    assert torch.equal(back.routers[1](x, c).gate_logit, routers[1](x, c).gate_logit)
    info = describe(back)
    assert (info["layout"], info["mod_rank"]) == ("compact", 4)
    assert info["router_parameters"] == sum(p.numel() for p in routers[0].parameters())


def test_released_layout_is_still_written_as_version_1(tmp_path):
    path = tmp_path / "r.safetensors"
    routers = make_routers()
    save_routers(path, routers, make_meta(routers))
    md = ck.read_header(str(path)).metadata
    assert md["format_version"] == "1" and "router_layout" not in md and "mod_rank" not in md
    assert describe(load_routers(path))["layout"] == "released"


def write_compact(path, tensors=None, metadata=None):
    routers = make_compact()
    t, md = ck._encode(routers, make_meta(routers))
    save_file(tensors(t) if tensors else t, str(path), metadata=metadata(md) if metadata else md)
    return path


def test_compact_metadata_faults_refused(tmp_path):
    raises(write_compact(tmp_path / "a.safetensors", metadata=lambda md: md | {"format_version": "1"}),
           "format_version 1", "compact-layout metadata", "format_version 2")
    raises(write_compact(tmp_path / "b.safetensors", metadata=lambda md: {k: v for k, v in md.items() if k != "mod_rank"}),
           "missing metadata key 'mod_rank'")
    raises(write_compact(tmp_path / "c.safetensors", metadata=lambda md: md | {"mod_rank": "four"}),
           "'mod_rank' is 'four'", "whole number")
    raises(write_compact(tmp_path / "d.safetensors", metadata=lambda md: md | {"router_layout": "tiny"}),
           "router_layout 'compact'", "'tiny'")


def test_compact_rank_that_does_not_match_the_tensors_refused(tmp_path):
    path = write_compact(tmp_path / "r.safetensors", metadata=lambda md: md | {"mod_rank": "5"})
    raises(path, "'routers.0.mod_down.weight' has wrong shape [4, 32]", "expected [5, 32]")


def test_compact_file_with_released_tensors_refused(tmp_path):
    released = make_routers()
    t, _ = ck._encode(released, make_meta(released))
    path = write_compact(tmp_path / "r.safetensors", tensors=lambda _: t)
    raises(path, "missing router tensor", "mod_down.weight")
