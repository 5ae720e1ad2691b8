"""Reading a safetensors file's header safely, and the checks every router file passes: each error names
the file, what was wrong and what was expected. Tensors are read one at a time, only those asked for.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import torch
from safetensors import safe_open
from torch import Tensor

PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_MAX_HEADER = 100 * 2**20  # safetensors' own header limit
_PICKLE = ("pickle files are not loaded because they can run code when opened; "
           "convert it to .safetensors and load that")


class CheckpointError(ValueError):
    """A router file that cannot be used; the message names the file, the fault and the expectation."""


def _err(path: str, msg: str) -> CheckpointError:
    return CheckpointError(f"{path}: {msg}")


@dataclass(frozen=True)
class _Header:
    tensors: dict  # key -> {"dtype": str, "shape": [int], "data_offsets": [begin, end]}
    metadata: dict  # str -> str


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "file not found"
        raise _err(path, f"{what}; expected a .safetensors router file or E-DiT checkpoint")
    if path.lower().endswith(PICKLE_EXTENSIONS):
        raise _err(path, f"has a pickle extension; {_PICKLE}")
    with open(path, "rb") as f:
        head = f.read(9)
    # A safetensors header length can itself start with 0x80 (1 in 256 files): a length that fits and
    # a JSON object behind it mean safetensors, whatever the first byte.
    fits = len(head) == 9 and head[8:] == b"{" and struct.unpack("<Q", head[:8])[0] <= os.path.getsize(path) - 8
    if not fits and (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):  # torch.save zip / raw pickle
        raise _err(path, f"is a pickle (torch.save) file despite its name, not safetensors; {_PICKLE}")


def _check_entry(path: str, key: str, e) -> None:
    ok = (isinstance(e, dict) and isinstance(e.get("dtype"), str) and isinstance(e.get("shape"), list)
          and all(isinstance(s, int) and s >= 0 for s in e["shape"])
          and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2
          and all(isinstance(o, int) for o in e["data_offsets"]) and 0 <= e["data_offsets"][0] <= e["data_offsets"][1])
    if not ok:
        raise _err(path, f"corrupt safetensors header: entry {key!r} is malformed; expected dtype, shape and data_offsets")


def read_header(path: str) -> _Header:
    """Parse and check the header: 8-byte little-endian length, JSON, data within the file."""
    path = os.fspath(path)
    _check_file(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise _err(path, f"not a safetensors file: {size} bytes, too short for the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise _err(path, f"not a safetensors file or corrupt header: header length {n} bytes is larger than "
                             f"the file ({size} bytes); expected a safetensors header")
        if n > _MAX_HEADER:
            raise _err(path, f"safetensors header of {n} bytes exceeds the {_MAX_HEADER // 2**20} MiB limit safetensors "
                             "itself enforces; expected a router file (its header is a few kB)")
        text = f.read(n)
    try:
        header = json.loads(text)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise _err(path, f"not a safetensors file or corrupt header: the header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _err(path, "corrupt safetensors header: expected a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _err(path, "corrupt safetensors header: __metadata__ must map strings to strings")
    for key, entry in header.items():
        _check_entry(path, key, entry)
    data = size - 8 - n
    end = max((e["data_offsets"][1] for e in header.values()), default=0)
    if end > data:
        raise _err(path, f"truncated: tensor data ends at byte {end} but the file holds only {data} bytes of data; "
                         "expected the complete file (the download or copy was cut short)")
    return _Header(header, metadata)


def _listing(items: list[str], most: int = 4) -> str:
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def _check_keys(path: str, found: dict, want: dict[str, str], subkeys: tuple[str, ...]) -> None:
    """found: header entries of the router keys present; want: key -> name of its block."""
    missing = [f"{k!r} (block {b!r})" for k, b in want.items() if k not in found]
    if missing:
        raise _err(path, f"missing router tensor(s) {_listing(missing)}; expected {', '.join(subkeys)} for every block")
    unexpected = sorted(repr(k) for k in set(found) - set(want))
    if unexpected:
        raise _err(path, f"unexpected key(s) {_listing(unexpected)}; expected only the router tensors of "
                         f"{len(set(want.values()))} blocks")
    for k in want:
        if found[k]["dtype"] not in _FLOAT_DTYPES:
            raise _err(path, f"tensor {k!r} has non-float dtype {found[k]['dtype']}; expected one of {', '.join(_FLOAT_DTYPES)}")


def _check_width_rows(path: str, found: dict, keys: list[str], widths: tuple[float, ...]) -> None:
    for k in keys:
        rows = (found[k]["shape"] or [0])[0]
        if rows != len(widths):
            raise _err(path, f"widths count mismatch: {k!r} has {rows} rows but the router has {len(widths)} "
                             f"widths {list(widths)}; expected one width_head row per width")


def _check_shapes(path: str, found: dict, want: dict[str, tuple[int, ...]]) -> None:
    for k, shape in want.items():
        if tuple(found[k]["shape"]) != shape:
            raise _err(path, f"tensor {k!r} has wrong shape {found[k]['shape']}; expected {list(shape)}")


def _read(path: str, keys: dict[str, str], device) -> dict[str, Tensor]:
    """Read only `keys` (file key -> RouterSet key), one tensor at a time; refuse NaN / Inf."""
    state = {}
    try:
        with safe_open(path, framework="pt", device=str(device)) as f:
            for fkey, skey in keys.items():
                state[skey] = f.get_tensor(fkey)
    except Exception as e:  # safetensors' own errors (bad offsets, sizes): keep the file name in front
        raise _err(path, f"could not read router tensors: {e}") from e
    for fkey, skey in keys.items():
        if not torch.isfinite(state[skey]).all():
            raise _err(path, f"tensor {fkey!r} holds NaN or Inf; expected finite router weights "
                             "(the file is damaged or training diverged)")
    return state
