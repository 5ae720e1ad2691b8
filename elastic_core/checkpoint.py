"""Router checkpoint IO: our safetensors format, and import of the authors' released E-DiT file.

Our format is a small safetensors file: tensors `routers.{i}.<Router state_dict key>` (exactly the
RouterSet's state_dict) and str->str metadata carrying a format name and version, the family, the
blocks, the router shape, the inference defaults, the training targets and the provenance. Version 1
holds routers of the released layout; version 2 the compact layout (a rank-r modulation, metadata
`router_layout` "compact" and `mod_rank`). Released-layout files are still written as version 1, so
older readers load them.

The authors' release is ONE full Qwen-Image DiT state dict (~40 GB) with the routers under
`[prefix]gate_mlps.{i}.`; only those tensors are read, one at a time.

Every file is checked from its header (parsed by st_file.py, so errors are clear) before any tensor is read,
and every error names the file, what was wrong and what was expected: a bad download or a wrong file
fails when it is loaded, never halfway through sampling.
"""
from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass, field, fields

import torch
from safetensors.torch import save_file
from torch import Tensor

from .config import WIDTHS, ElasticConfig, RouterConfig
from .elastic_mlp import MLP_ACTIVATIONS
from .router import Router, RouterSet
from .st_file import PICKLE_EXTENSIONS, CheckpointError, read_header  # noqa: F401  (re-exported)
from .st_file import _check_keys, _check_shapes, _check_width_rows, _err, _Header, _read

FORMAT = "elastic-dit-router"
FORMAT_VERSION = "1"  # the released layout
COMPACT_VERSION = "2"  # the compact layout
SUPPORTED_VERSIONS = ("1", "2")
# The released code's behaviour: band [0.5, 0.515], K = 10, caching from step 15 of 30.
RELEASED_DEFAULTS = {"tau": 0.5, "delta": 0.015, "max_reuse": 10, "cache_start": 0.5, "cache_end": 1.0}
RELEASED_MLP_ACTIVATION = "quick_gelu"  # the released DiT's MLPs run x * sigmoid(1.702 x), not tanh-GELU
RELEASED_CONVERTER = "elastic_core.checkpoint.import_released"

_GENERIC_FORMATS = ("pt", "np", "tf", "flax", "mlx")  # tags torch/transformers write; not a router format
_RELEASED_KEY = re.compile(r"^((?:[^.]+\.)*?)gate_mlps\.(\d+)\.(.+)$")  # prefix, block index, sub-key
_PLAIN = (f"holds no E-DiT routers; it is a plain model file (no 'gate_mlps.' keys and no {FORMAT!r} "
          "metadata); expected the authors' E-DiT checkpoint or a router file made by 'elastic-dit convert'")


@dataclass(frozen=True)
class RouterMeta:
    family: str  # "qwen_image", "flux", ...
    block_names: tuple[str, ...]
    router: RouterConfig  # dim, cond_dim, hidden, widths, activation
    defaults: dict = field(default_factory=dict)  # ElasticConfig fields to sample with (tau, delta, ...)
    rho_g: float | None = None  # training target of the mean gate probability
    rho_w: float | None = None  # training target of the mean width ratio
    provenance: dict = field(default_factory=dict)  # str -> str: source, converter/trainer, date, notes
    # The MLP activation the routers were trained under, when not the model's own (MLP_ACTIVATIONS key):
    # the released routers' DiT ran "quick_gelu". Apply runs the routed blocks' MLPs with it.
    mlp_activation: str | None = None

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "block_names", tuple(self.block_names))
        set_(self, "defaults", dict(self.defaults))
        set_(self, "provenance", {str(k): str(v) for k, v in self.provenance.items()})
        for name in ("rho_g", "rho_w"):
            v = getattr(self, name)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    raise ValueError(f"target {name} must be a number in [0, 1], got {v!r}")
                set_(self, name, float(v))
        unknown = set(self.defaults) - {f.name for f in fields(ElasticConfig)}
        if unknown:
            raise ValueError(f"defaults has keys {sorted(unknown)} that are not ElasticConfig fields")
        if self.mlp_activation is not None and self.mlp_activation not in MLP_ACTIVATIONS:
            raise ValueError(f"mlp_activation {self.mlp_activation!r} is not one of {sorted(MLP_ACTIVATIONS)} "
                             "(or absent: the model's own)")
        self.elastic_config()  # values are checked by ElasticConfig itself

    @property
    def dim(self) -> int:
        return self.router.dim

    @property
    def cond_dim(self) -> int:
        return self.router.cond

    def elastic_config(self) -> ElasticConfig:
        return ElasticConfig(**self.defaults)

    @classmethod
    def for_routers(cls, routers: RouterSet, family: str, **kw) -> "RouterMeta":
        return cls(family, routers.block_names, routers.config, **kw)


@dataclass(frozen=True)
class RouterCheckpoint:
    routers: RouterSet
    meta: RouterMeta
    path: str


# -- the safetensors header, parsed by hand so that every fault gets a clear message --------------

# -- checks shared by both layouts ----------------------------------------------------------------

def _subkeys(config: RouterConfig) -> tuple[str, ...]:
    """One router's state_dict keys: img_mod.1.weight, ..., width_head.bias (compact: mod_down / mod_up)."""
    return tuple(_expected_shapes(config))



def _expected_shapes(config: RouterConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory, no init
        return {k: tuple(v.shape) for k, v in Router(config).state_dict().items()}


def _build(config: RouterConfig, names: tuple[str, ...], state: dict[str, Tensor]) -> RouterSet:
    with torch.device("meta"):  # released routers are ~3 GB: no random init, no second copy
        routers = RouterSet(config, names)
    routers.load_state_dict(state, assign=True)  # the file's tensors as they are: dtype and device kept
    return routers


def _check_router_shapes(path, h: _Header, meta: RouterMeta, fkey) -> dict[str, str]:
    """Shape checks; -> {file key: our key}. fkey(i, sub) -> the file's key of block i's router tensor sub."""
    n, shapes = len(meta.block_names), _expected_shapes(meta.router)
    _check_width_rows(path, h.tensors, [fkey(i, "width_head.weight") for i in range(n)], meta.router.widths)
    _check_shapes(path, h.tensors, {fkey(i, s): shape for i in range(n) for s, shape in shapes.items()})
    return {fkey(i, s): f"routers.{i}.{s}" for i in range(n) for s in shapes}


def _finish(path, h: _Header, meta: RouterMeta, fkey, device) -> RouterCheckpoint:
    """Shape checks, then the read."""
    state = _read(path, _check_router_shapes(path, h, meta, fkey), device)
    return RouterCheckpoint(_build(meta.router, meta.block_names, state), meta, path)


# -- our format -----------------------------------------------------------------------------------

def _encode(routers: RouterSet, meta: RouterMeta) -> tuple[dict[str, Tensor], dict[str, str]]:
    if meta.block_names != routers.block_names or meta.router != routers.config:
        raise ValueError("meta.block_names and meta.router must match the routers' block_names and config")
    # Kept in the routers' own float dtype (float32 unless they were cast); safetensors wants contiguous.
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in routers.state_dict().items()}
    return tensors, router_metadata(meta)


def router_metadata(meta: RouterMeta) -> dict[str, str]:
    """The metadata of our format for routers described by `meta`."""
    c = meta.router
    blocks = [{"name": n, "dim": c.dim, "cond_dim": c.cond} for n in meta.block_names]
    act = {} if meta.mlp_activation is None else {"mlp_activation": meta.mlp_activation}
    layout = {} if c.mod_rank is None else {"router_layout": "compact", "mod_rank": str(c.mod_rank)}
    return {**act,
        "format": FORMAT, "format_version": FORMAT_VERSION if c.mod_rank is None else COMPACT_VERSION,
        "family": meta.family, **layout,
        "blocks": json.dumps(blocks), "router_hidden": str(c.hidden), "widths": json.dumps(list(c.widths)),
        "activation": c.activation, "ln_eps": repr(c.ln_eps), "defaults": json.dumps(meta.defaults),
        "targets": json.dumps({"rho_g": meta.rho_g, "rho_w": meta.rho_w}),
        "provenance": json.dumps(meta.provenance),
    }


def save_routers(path, routers: RouterSet, meta: RouterMeta) -> None:
    """Write routers in our format; written to a side file first so a crash never leaves half a file."""
    path = os.fspath(path)
    tensors, metadata = _encode(routers, meta)
    tmp = path + ".partial"
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _meta_field(path: str, md: dict, key: str, kind: type | None = None):
    if key not in md:
        raise _err(path, f"missing metadata key {key!r}; expected it in a {FORMAT} file")
    if kind is None:
        return md[key]
    try:
        value = json.loads(md[key])
    except ValueError as e:
        raise _err(path, f"metadata {key!r} does not parse as JSON ({e}); expected a JSON {kind.__name__}") from None
    if not isinstance(value, kind):
        raise _err(path, f"metadata {key!r} is a JSON {type(value).__name__}; expected a JSON {kind.__name__}")
    return value


def _parse_blocks(path: str, blocks: list) -> tuple[tuple[str, ...], int, int]:
    """-> block names, dim, cond_dim; every block must have the same router dims."""
    if not blocks:
        raise _err(path, "metadata 'blocks' is empty; expected one entry per block")
    if not all(isinstance(b, dict) and isinstance(b.get("name"), str) and isinstance(b.get("dim"), int)
               and isinstance(b.get("cond_dim"), int) for b in blocks):
        raise _err(path, 'metadata \'blocks\' is malformed; expected a list of {"name", "dim", "cond_dim"}')
    first = blocks[0]
    for b in blocks[1:]:
        if (b["dim"], b["cond_dim"]) != (first["dim"], first["cond_dim"]):
            raise _err(path, f"routers of different dims across blocks: {first['name']!r} has dim {first['dim']} "
                             f"cond_dim {first['cond_dim']}, {b['name']!r} has dim {b['dim']} cond_dim {b['cond_dim']}; "
                             "expected one router shape for all blocks")
    names = tuple(b["name"] for b in blocks)
    if len(set(names)) != len(names):
        raise _err(path, "metadata 'blocks' repeats a block name; expected unique names")
    return names, first["dim"], first["cond_dim"]


def _number(path: str, key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _err(path, f"metadata {key!r} is {text!r}; expected a number") from None


def _parse_meta(path: str, md: dict) -> RouterMeta:
    version = md.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise _err(path, f"unsupported format_version {version!r}; this elastic-dit reads {FORMAT} "
                         f"format_version {', '.join(SUPPORTED_VERSIONS)}")
    family, activation = _meta_field(path, md, "family"), _meta_field(path, md, "activation")
    hidden, ln_eps = _meta_field(path, md, "router_hidden"), _number(path, "ln_eps", md.get("ln_eps", "1e-06"))
    names, dim, cond = _parse_blocks(path, _meta_field(path, md, "blocks", list))
    widths = _meta_field(path, md, "widths", list)
    defaults, targets = _meta_field(path, md, "defaults", dict), _meta_field(path, md, "targets", dict)
    provenance = _meta_field(path, md, "provenance", dict)
    # Files converted before the key existed: the converter's name says they hold the released routers.
    act = md.get("mlp_activation") or (RELEASED_MLP_ACTIVATION if provenance.get("converter") == RELEASED_CONVERTER
                                       and family == "qwen_image" else None)
    mod_rank = _mod_rank(path, md, version)
    try:
        config = RouterConfig(dim=dim, cond_dim=None if cond == dim else cond, hidden=int(hidden),
                              widths=tuple(widths), activation=activation, ln_eps=ln_eps, mod_rank=mod_rank)
        return RouterMeta(family, names, config, defaults, targets.get("rho_g"), targets.get("rho_w"), provenance,
                          mlp_activation=act)
    except (TypeError, ValueError) as e:
        raise _err(path, f"invalid metadata: {e}") from None


def _mod_rank(path: str, md: dict, version: str) -> int | None:
    """None for version 1 (the released layout); version 2: the compact layout's rank."""
    if version == FORMAT_VERSION:
        if "router_layout" in md or "mod_rank" in md:
            raise _err(path, f"format_version {FORMAT_VERSION} (the released router layout) with compact-layout "
                             f"metadata (router_layout / mod_rank); expected format_version {COMPACT_VERSION} for that")
        return None
    if md.get("router_layout") != "compact":
        raise _err(path, f"format_version {version} needs metadata router_layout 'compact', got "
                         f"{md.get('router_layout')!r}")
    rank = _meta_field(path, md, "mod_rank")
    if not rank.isdigit() or int(rank) < 1:
        raise _err(path, f"metadata 'mod_rank' is {rank!r}; expected a whole number >= 1")
    return int(rank)


def _load_ours(path: str, h: _Header, device) -> RouterCheckpoint:
    meta = _parse_meta(path, h.metadata)
    subkeys = _subkeys(meta.router)
    want = {f"routers.{i}.{s}": name for i, name in enumerate(meta.block_names) for s in subkeys}
    _check_keys(path, h.tensors, want, subkeys)  # every tensor in our file must be a router tensor
    return _finish(path, h, meta, lambda i, s: f"routers.{i}.{s}", device)


# -- the authors' released layout -----------------------------------------------------------------

def _released_groups(path: str, h: _Header) -> tuple[str, int, dict]:
    """-> key prefix, block count, header entries of the `gate_mlps.` keys (backbone keys ignored)."""
    found, prefixes, indices = {}, set(), set()
    for key, entry in h.tensors.items():
        m = _RELEASED_KEY.match(key)
        if m:
            found[key] = entry
            prefixes.add(m[1])
            indices.add(int(m[2]))
    if not found:
        raise _err(path, _PLAIN)
    if len(prefixes) > 1:
        raise _err(path, f"'gate_mlps.' keys under several prefixes {sorted(prefixes)}; expected one")
    n = max(indices) + 1
    gaps = sorted(set(range(n)) - indices)
    if gaps:
        raise _err(path, f"router indices have gaps: gate_mlps {gaps} missing among 0..{n - 1}; "
                         "expected indices 0..N-1 without gaps")
    return prefixes.pop(), n, found


def _released_config(path: str, found: dict, fkey, names: tuple[str, ...]) -> RouterConfig:
    """Router dims read from the shapes: D and H from out.0.weight [H, D], C from img_mod.1.weight [3D, C]."""
    for key in (fkey(i, s) for i in range(len(names)) for s in ("out.0.weight", "img_mod.1.weight")):
        if len(found[key]["shape"]) != 2:
            raise _err(path, f"tensor {key!r} has wrong shape {found[key]['shape']}; expected a 2-D weight")
    trunk, mod = [[found[fkey(i, s)]["shape"] for i in range(len(names))] for s in ("out.0.weight", "img_mod.1.weight")]
    dims = [(t[1], m[1], t[0]) for t, m in zip(trunk, mod)]  # D, C, H per block
    for name, d in zip(names, dims):
        if d != dims[0]:
            raise _err(path, f"routers of different dims across blocks: {names[0]!r} has dim/cond_dim/hidden "
                             f"{dims[0]}, {name!r} has {d}; expected one router shape for all blocks")
    d, c, hidden = dims[0]
    return RouterConfig(dim=d, cond_dim=None if c == d else c, hidden=hidden, widths=WIDTHS, activation="relu")


def _load_released(path: str, h: _Header, device) -> RouterCheckpoint:
    meta, fkey = _released_meta(path, h)
    return _finish(path, h, meta, fkey, device)


def released_plan(path) -> tuple[RouterMeta, dict[str, str]]:
    """Header only, every check but the values: the released file's router meta and {file key: our key},
    for a caller that copies the router tensors one at a time (then it must refuse NaN / Inf itself)."""
    path = os.fspath(path)
    h = read_header(path)
    if h.metadata.get("format") == FORMAT:
        raise _err(path, f"is already a {FORMAT} file; expected the authors' E-DiT checkpoint")
    meta, fkey = _released_meta(path, h)
    return meta, _check_router_shapes(path, h, meta, fkey)


def _released_meta(path: str, h: _Header):
    prefix, n, found = _released_groups(path, h)
    names = tuple(f"transformer_blocks.{i}" for i in range(n))

    def fkey(i: int, sub: str) -> str:
        return f"{prefix}gate_mlps.{i}.{sub}"

    subkeys = _subkeys(RouterConfig(dim=1, hidden=1))  # the released layout
    _check_keys(path, found, {fkey(i, s): names[i] for i in range(n) for s in subkeys}, subkeys)
    config = _released_config(path, found, fkey, names)
    provenance = {"source": os.path.basename(path), "converter": RELEASED_CONVERTER,
                  "date": datetime.date.today().isoformat(),
                  "notes": "authors' released Qwen-Image E-DiT routers (gate_mlps); rho targets not published with the file"}
    return RouterMeta("qwen_image", names, config, RELEASED_DEFAULTS, provenance=provenance,
                      mlp_activation=RELEASED_MLP_ACTIVATION), fkey


def import_released(path, device="cpu") -> RouterCheckpoint:
    """The routers of the authors' full-DiT file; reads only the `gate_mlps.` tensors."""
    path = os.fspath(path)
    h = read_header(path)
    if h.metadata.get("format") == FORMAT:
        raise _err(path, f"is already a {FORMAT} file; expected the authors' E-DiT checkpoint (use load_routers)")
    return _load_released(path, h, device)


def has_released_routers(path) -> bool:
    """Cheap header-only check (for file lists): does this safetensors file carry `gate_mlps.` routers?"""
    try:
        h = read_header(path)
    except CheckpointError:
        return False
    return any(_RELEASED_KEY.match(k) for k in h.tensors)


def load_routers(path, device="cpu") -> RouterCheckpoint:
    """Our format (by its metadata) or the authors' released file (by its `gate_mlps.` keys)."""
    path = os.fspath(path)
    h = read_header(path)
    fmt = h.metadata.get("format")
    if fmt == FORMAT:
        return _load_ours(path, h, device)
    if any(_RELEASED_KEY.match(k) for k in h.tensors):
        return _load_released(path, h, device)
    if fmt is not None and fmt not in _GENERIC_FORMATS:
        raise _err(path, f"unknown format {fmt!r}; expected {FORMAT!r} (format_version "
                         f"{', '.join(SUPPORTED_VERSIONS)}) or the authors' E-DiT checkpoint")
    raise _err(path, _PLAIN)


# -- summary --------------------------------------------------------------------------------------

def describe(ckpt: RouterCheckpoint) -> dict:
    """JSON-ready summary; per block the router's leaning at zero input (biases only)."""
    m, routers, c = ckpt.meta, ckpt.routers, ckpt.meta.router
    bias = routers.gate_bias().float().cpu()  # [N]
    # argmax of the width bias, computed on CPU
    width_idx = torch.stack([r.width_head.bias.detach().float().cpu() for r in routers.routers]).argmax(-1)  # [N]
    per_block = [{"index": i, "name": name, "gate_bias": float(b), "p_open": float(torch.sigmoid(b)),
                  "preferred_width": c.widths[int(w)]}
                 for i, (name, b, w) in enumerate(zip(m.block_names, bias, width_idx))]
    return {
        "path": ckpt.path, "family": m.family, "blocks": len(routers), "block_names": list(m.block_names),
        "dim": m.dim, "cond_dim": m.cond_dim, "hidden": c.hidden, "widths": list(c.widths),
        "activation": c.activation, "mlp_activation": m.mlp_activation,
        "dtype": str(routers.routers[0].out[0].weight.dtype).removeprefix("torch."),
        "layout": c.layout, "mod_rank": c.mod_rank,
        "router_parameters": sum(p.numel() for p in routers.routers[0].parameters()),
        "defaults": dict(m.defaults), "targets": {"rho_g": m.rho_g, "rho_w": m.rho_w},
        "provenance": dict(m.provenance), "per_block": per_block,
    }
