"""The released E-DiT checkpoint as routers + a LoRA on the user's own base model.

The authors trained Qwen-Image end to end; their file holds the whole DiT (~40 GB) plus the routers.
What the backbone learned is the difference to the base it started from. Its top-r singular part per
linear weight is a LoRA, which ComfyUI applies to the user's own copy of the base in any storage
(bf16, fp8, GGUF: ComfyUI patches LoRAs through its own cast path). Biases and other non-matrix
tensors that changed go into the same file whole, as ComfyUI's `diff` patches.

Memory: no tensor is held whole. Each weight's difference is read in row blocks (from a memory map
of each file) and its top-r part is found by a randomized SVD (Halko, Martinsson, Tropp 2011) that
only multiplies by the difference: a few passes over row blocks, with [m, q] and [n, q] panels. The
routers and the LoRA are streamed to disk as they are made. The error is measured, not estimated:
a last pass computes || dW - up @ down ||_F per weight, with up and down as the file stores them
(rounded to its dtype: bf16 by default), so the report is the error of the file, not of the fp32
factors.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .checkpoint import CheckpointError, read_header, released_plan, router_metadata
from .lora import ALPHA, DOWN, FORMAT, FORMAT_VERSION, PREFIX, UP

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
_READ = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
         "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_BLOCK_BYTES = 32 * 2**20  # a row block of the difference, in float32, at most this ...
_BLOCK_SHARE = 16  # ... and at most 1/16 of the tensor's rows
_QUANT_MARKS = ("scale_weight", "weight_scale", "scaled_fp8", "comfy_quant", "input_scale")


class StreamWriter:
    """A safetensors file written one tensor at a time: data to a side file as it comes, the header
    in front at the end. Nothing is held but the tensor being written."""

    def __init__(self, path: str):
        self.path, self.entries, self.offset = path, {}, 0
        self._data = open(path + ".data.partial", "wb")

    def add(self, key: str, t: Tensor) -> None:
        t = t.detach().to("cpu").contiguous()
        if t.dtype not in _DTYPES or key in self.entries:
            raise ValueError(f"{key}: dtype {t.dtype} or a repeated key")
        raw = t.reshape(-1).view(torch.uint8).numpy()  # the tensor's own bytes, not a copy
        self.entries[key] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                             "data_offsets": [self.offset, self.offset + raw.size]}
        self._data.write(memoryview(raw))
        self.offset += raw.size

    def close(self, metadata: dict[str, str]) -> None:
        self._data.close()
        head = json.dumps({"__metadata__": metadata, **self.entries}, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)  # safetensors aligns the data to 8 bytes
        tmp = self.path + ".partial"
        buf = memoryview(bytearray(2**18))  # one fixed copy buffer
        with open(tmp, "wb") as out, open(self.path + ".data.partial", "rb") as data:
            out.write(struct.pack("<Q", len(head)) + head)
            while n := data.readinto(buf):
                out.write(buf[:n])
        os.replace(tmp, self.path)
        os.remove(self.path + ".data.partial")

    def abort(self) -> None:
        self._data.close()
        for p in (self.path + ".data.partial", self.path + ".partial"):
            if os.path.exists(p):
                os.remove(p)


class Mapped:
    """A safetensors file's tensors read in place (a memory map of the data): rows of one tensor at a
    time, copied out as new tensors; nothing else is kept."""

    def __init__(self, path: str):
        self.path, self.header = path, read_header(path)
        with open(path, "rb") as f:
            self.start = 8 + struct.unpack("<Q", f.read(8))[0]
        self.map = np.memmap(path, np.uint8, "c")  # copy-on-write: writable for torch, never written

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.header.tensors[key]["shape"])

    def rows(self, key: str, a: int, b: int, dtype=torch.float32) -> Tensor:
        """Rows a:b of tensor `key` as a new tensor of `dtype` (None: the file's). -> [b - a, ...]"""
        e = self.header.tensors[key]
        kind = _READ.get(e["dtype"])
        if kind is None:
            raise CheckpointError(f"{self.path}: tensor {key!r} has dtype {e['dtype']}; expected a float dtype")
        shape = e["shape"] or [1]
        row = math.prod(shape[1:]) * torch.empty(0, dtype=kind).element_size()
        off = self.start + e["data_offsets"][0]
        raw = torch.from_numpy(self.map[off + a * row: off + b * row])
        t = raw.view(kind).reshape(b - a, *shape[1:]) if e["shape"] else raw.view(kind).reshape(())
        return t.to(kind if dtype is None else dtype, copy=True)

    def tensor(self, key: str, dtype=torch.float32) -> Tensor:
        return self.rows(key, 0, (self.shape(key) or (1,))[0], dtype)


# -- the low-rank part of one difference, read in row blocks --------------------------------------

# (a, b) -> (released rows, base rows), float32 [b-a, n], new tensors the caller may change in place
RowReader = Callable[[int, int], tuple[Tensor, Tensor]]


@dataclasses.dataclass(frozen=True)
class LowRank:
    up: Tensor  # [m, r]
    down: Tensor  # [r, n]
    err2: float  # || dW - up @ down ||_F^2
    delta2: float  # || dW ||_F^2
    weight2: float  # || W_released ||_F^2


def _blocks(m: int, n: int) -> list[tuple[int, int]]:
    rows = max(1, min(_BLOCK_BYTES // (4 * n), math.ceil(m / _BLOCK_SHARE)))
    return [(a, min(a + rows, m)) for a in range(0, m, rows)]


def low_rank(read: RowReader, m: int, n: int, rank: int, oversample: int = 8, power_iters: int = 2,
             seed: int = 0, dtype=torch.float32) -> LowRank:
    """The top-`rank` singular part of dW = released - base ([m, n]); exact when rank(dW) <= rank.
    up and down come in `dtype` (the file's); err2 is measured on them as rounded."""
    q = min(rank + oversample, m, n)
    blocks = _blocks(m, n)

    def delta(a, b):
        rel, base = read(a, b)
        return rel.sub_(base)  # [b - a, n] float32, in place: two row blocks alive, never more

    def times(x: Tensor) -> Tensor:  # dW @ x: [n, q] -> [m, q]
        out = torch.empty(m, x.shape[1])
        for a, b in blocks:
            torch.mm(delta(a, b), x, out=out[a:b])
        return out

    def t_times(y: Tensor) -> Tensor:  # dW^T @ y: [m, q] -> [n, q]
        acc = torch.zeros(n, y.shape[1])
        for a, b in blocks:
            acc.addmm_(delta(a, b).T, y[a:b])
        return acc

    g = torch.Generator().manual_seed(seed)
    sketch = times(torch.randn(n, q, generator=g))  # [m, q]
    if not torch.isfinite(sketch).all():
        raise FloatingPointError("the difference holds NaN or Inf")
    basis = torch.linalg.qr(sketch).Q  # [m, q]
    for _ in range(power_iters):  # sharpen the spectrum: (dW dW^T)^p dW Omega, re-orthonormalised
        basis = torch.linalg.qr(times(torch.linalg.qr(t_times(basis)).Q)).Q
    u_b, s, vt = torch.linalg.svd(t_times(basis).T, full_matrices=False)  # of basis^T dW: [q, n]
    r = min(rank, q)
    root = s[:r].sqrt()
    up, down = ((basis @ u_b[:, :r]) * root).to(dtype), (root[:, None] * vt[:r]).to(dtype)  # [m, r], [r, n]
    up32, down32 = up.float(), down.float()  # what a loader computes with: the stored values
    err2 = delta2 = weight2 = 0.0
    for a, b in blocks:  # the measured residual
        rel, base = read(a, b)
        weight2 += float(torch.linalg.vector_norm(rel) ** 2)
        d = rel.sub_(base)
        delta2 += float(torch.linalg.vector_norm(d) ** 2)
        err2 += float(torch.linalg.vector_norm(d.addmm_(up32[a:b], down32, alpha=-1.0)) ** 2)
    return LowRank(up, down, err2, delta2, weight2)


# -- the two files --------------------------------------------------------------------------------

@dataclasses.dataclass
class Report:
    layers: list[dict] = dataclasses.field(default_factory=list)  # per low-rank weight: key, shape, rank, errors
    diffs: list[str] = dataclasses.field(default_factory=list)  # keys stored whole (changed biases, norms, ...)
    unchanged: int = 0  # backbone tensors equal in both files
    diff_err2: float = 0.0  # the whole diffs: || d - d as stored ||^2 (rounding to the file's dtype)
    diff_delta2: float = 0.0  # || d ||^2

    def total(self) -> dict:
        """rel_error: of the low-rank weights, as stored; diff_rel_error: of the whole diffs, as stored."""
        err = sum(x["err2"] for x in self.layers)
        d = sum(x["delta2"] for x in self.layers)
        w = sum(x["weight2"] for x in self.layers)
        return {"layers": len(self.layers), "rel_error": math.sqrt(err / d) if d else 0.0,
                "rel_to_weights": math.sqrt(err / w) if w else 0.0, "diffs": len(self.diffs),
                "diff_rel_error": math.sqrt(self.diff_err2 / self.diff_delta2) if self.diff_delta2 else 0.0,
                "unchanged": self.unchanged, "rank": max((x["rank"] for x in self.layers), default=0)}


def _base_prefix(base_keys, keys: list[str], src: str) -> str:
    """The prefix the base file puts before the released file's backbone keys ('' or e.g. 'model.diffusion_model.')."""
    probe = next((k for k in keys if k.endswith(".weight")), keys[0])
    found = [bk[: len(bk) - len(probe)] for bk in base_keys if bk.endswith(probe)]
    if not found:
        raise CheckpointError(f"{src}: holds no {probe!r}; expected the base model the release was fine-tuned from "
                              "(Qwen-Image, bf16 safetensors)")
    return max(found, key=lambda p: sum(p + k in base_keys for k in keys[:64]))


def check_base(released: str, base: str) -> tuple[dict[str, str], dict[str, tuple]]:
    """Headers only: {backbone key (no prefix): base file key}, {key: (released file key, shape)},
    or a CheckpointError if `base` is not the model the release was fine-tuned from."""
    rh, bh = read_header(released), read_header(base)
    rel = {k: e for k, e in rh.tensors.items() if ".gate_mlps." not in f".{k}"}
    gate = next((k for k in rh.tensors if ".gate_mlps." in f".{k}"), None)
    if gate is None:
        raise CheckpointError(f"{released}: holds no E-DiT routers (no 'gate_mlps.' keys); expected the authors' "
                              "E-DiT checkpoint")
    mark = next((k for k in bh.tensors if any(m in k for m in _QUANT_MARKS)), None)
    if mark or any(m in bh.metadata.get(k, "") for k in bh.metadata for m in ("scaled_fp8", "comfy_quant")):
        raise CheckpointError(f"{base}: a quantized file ({mark or 'scaled fp8 metadata'}); expected the unquantized "
                              "(bf16 / fp16 / fp32) base: the LoRA then applies to any quantized copy of it")
    prefix = gate[: gate.index("gate_mlps.")]
    keys = {k[len(prefix):]: k for k in rel if k.startswith(prefix)}
    bprefix = _base_prefix(bh.tensors, list(keys), base)
    missing = [k for k in keys if bprefix + k not in bh.tensors]
    if missing:
        raise CheckpointError(f"{base}: lacks {len(missing)} of the release's backbone tensors ({missing[:3]}); "
                              "expected the base model the release was fine-tuned from")
    for k, rk in keys.items():
        a, b = rh.tensors[rk], bh.tensors[bprefix + k]
        if a["shape"] != b["shape"]:
            raise CheckpointError(f"{base}: {bprefix + k} has shape {b['shape']}, the release {a['shape']}; "
                                  "expected the base model the release was fine-tuned from")
    return {k: bprefix + k for k in keys}, {k: (keys[k], tuple(rh.tensors[keys[k]]["shape"])) for k in keys}


def _lora_key(key: str) -> tuple[str, bool]:
    """(ComfyUI LoRA key stem, low-rank?) for a backbone tensor key."""
    if key.endswith(".weight"):
        return PREFIX + key[: -len(".weight")], True
    return PREFIX + key, False


def extract_lora(released: str, base: str, out: str, rank: int, router_file: str = "", dtype=torch.bfloat16,
                 oversample: int = 8, power_iters: int = 2, log: Callable[[str], None] | None = None) -> Report:
    """Write to `out` the LoRA of (released backbone - base): rank-r parts of 2-D weights, whole
    diffs of other tensors that changed. Tensors are read one at a time (rows for the big ones)."""
    to_base, shapes = check_base(released, base)
    report, w = Report(), StreamWriter(out)
    fr, fb = Mapped(released), Mapped(base)
    try:
        for k, (rk, shape) in shapes.items():
            stem, matrix = _lora_key(k)
            if matrix and len(shape) == 2:
                before = len(report.layers)
                _write_low_rank(report, w, k, stem, lambda a, b: (fr.rows(rk, a, b), fb.rows(to_base[k], a, b)),
                                shape, rank, dtype, oversample, power_iters, (released, base))
                if log and len(report.layers) > before:
                    x = report.layers[-1]
                    log(f"{k}: {shape[0]} x {shape[1]} rank {x['rank']}, relative error {x['rel_error']:.4f}")
                continue
            _write_diff(report, w, k, stem, fr.tensor(rk).sub_(fb.tensor(to_base[k])), dtype, (released, base))
        w.close({"format": FORMAT, "format_version": FORMAT_VERSION, "family": "qwen_image",
                 "rank": str(report.total()["rank"]),  # what the file holds: weights smaller than `rank` clamp it
                 "router_file": router_file, "source": os.path.basename(released), "base": os.path.basename(base),
                 "rel_error": f"{report.total()['rel_error']:.6g}"})
    except BaseException:
        w.abort()
        raise
    return report


def _finite(ok: bool, key: str, released: str, base: str) -> None:
    if not ok:
        raise CheckpointError(f"{key}: NaN or Inf in {released} or {base}; expected finite weights (a damaged file)")


def _write_diff(report: Report, w: StreamWriter, key: str, stem: str, d: Tensor, dtype, files) -> None:
    _finite(bool(torch.isfinite(d).all()), key, *files)
    if not torch.any(d != 0):
        report.unchanged += 1
        return
    stored = d.to(dtype)
    report.diff_err2 += float(torch.linalg.vector_norm(d - stored.float()) ** 2)
    report.diff_delta2 += float(torch.linalg.vector_norm(d) ** 2)
    w.add(f"{stem}.diff", stored)
    report.diffs.append(key)


def _write_low_rank(report: Report, w: StreamWriter, key: str, stem: str, read: RowReader, shape, rank, dtype,
                    oversample, power_iters, files) -> None:
    m, n = shape
    try:
        lr = low_rank(read, m, n, rank, oversample, power_iters, dtype=dtype)
    except FloatingPointError:
        lr = None
    _finite(lr is not None and math.isfinite(lr.weight2 + lr.delta2 + lr.err2), key, *files)
    if lr.delta2 == 0.0:
        report.unchanged += 1
        return
    r = lr.up.shape[1]
    w.add(stem + UP, lr.up)
    w.add(stem + DOWN, lr.down)
    w.add(stem + ALPHA, torch.tensor(float(r)))
    report.layers.append({"key": key, "shape": [m, n], "rank": r, "err2": lr.err2, "delta2": lr.delta2,
                          "weight2": lr.weight2, "rel_error": math.sqrt(lr.err2 / lr.delta2),
                          "rel_to_weight": math.sqrt(lr.err2 / lr.weight2) if lr.weight2 else 0.0})


def stream_routers(released: str, out: str, provenance: dict | None = None):
    """The released routers to our router file, one tensor at a time (dtype kept). -> their RouterMeta"""
    meta, keys = released_plan(released)
    if provenance:
        meta = dataclasses.replace(meta, provenance={**meta.provenance, **provenance})
    w, f = StreamWriter(out), Mapped(released)
    try:
        for fkey, ours in keys.items():
            _copy_finite(f, fkey, w, ours)
        w.close(router_metadata(meta))
    except BaseException:
        w.abort()
        raise
    return meta


def _copy_finite(f: Mapped, key: str, w: StreamWriter, out_key: str) -> None:
    """One tensor from `f` to `w` in its own dtype, refusing NaN / Inf (a function: nothing outlives the copy)."""
    t = f.tensor(key, dtype=None)
    flat = t.reshape(-1)
    step = max(1, math.ceil(flat.numel() / _BLOCK_SHARE))  # isfinite makes temporaries: a part at a time
    if not all(bool(torch.isfinite(flat[a:a + step]).all()) for a in range(0, flat.numel(), step)):
        raise CheckpointError(f"{f.path}: tensor {key!r} holds NaN or Inf; expected finite router weights "
                              "(the file is damaged or training diverged)")
    w.add(out_key, t)
