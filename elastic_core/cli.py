"""`elastic-dit`: look into router checkpoints and convert the authors' release to our format.

    elastic-dit inspect FILE [--json]
    elastic-dit convert RELEASED.safetensors OUT.safetensors [--force]
    elastic-dit bench ...            (registered by elastic_core/bench.py when it exists)

Every subcommand sets `func(args) -> int`; a CheckpointError becomes `error: <message>`, exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

from . import bench
from .checkpoint import PICKLE_EXTENSIONS, CheckpointError, describe, import_released, load_routers, save_routers
from .toy import commands as toy_commands


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _fmt(x) -> str:
    return "-" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def _pairs(d: dict, sep: str = ", ") -> str:
    return sep.join(f"{k} {_fmt(v)}" for k, v in d.items()) or "-"


def _print_summary(info: dict) -> None:
    tau = info["defaults"].get("tau", 0.5)
    rows = info["per_block"]
    n_open = sum(r["p_open"] >= tau for r in rows)
    widths = Counter(r["preferred_width"] for r in rows)
    print(f"{info['path']}")
    print(f"  family      {info['family']}")
    print(f"  blocks      {info['blocks']}")
    print(f"  dims        dim {info['dim']}, cond_dim {info['cond_dim']}, router hidden {info['hidden']}, "
          f"activation {info['activation']}, dtype {info['dtype']}")
    print(f"  widths      {', '.join(_fmt(w) for w in info['widths'])}")
    print(f"  defaults    {_pairs(info['defaults'])}")
    print(f"  targets     {_pairs(info['targets'])}")
    print(f"  provenance  {_pairs(info['provenance'], '; ')}")
    print(f"  at zero input: {n_open}/{len(rows)} gates open (p >= tau {_fmt(tau)}); preferred width "
          + ", ".join(f"{_fmt(w)} x{k}" for w, k in sorted(widths.items())))


def _print_table(rows: list[dict]) -> None:
    name_w = max([len("block")] + [len(r["name"]) for r in rows])
    print(f"\n  {'#':>3}  {'block':<{name_w}}  {'gate bias':>9}  {'p_open':>6}  {'width':>5}")
    for r in rows:
        print(f"  {r['index']:>3}  {r['name']:<{name_w}}  {r['gate_bias']:>9.3f}  {r['p_open']:>6.3f}  "
              f"{r['preferred_width']:>5.2f}")


def _inspect(args) -> int:
    info = describe(load_routers(args.file))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_summary(info)
        _print_table(info["per_block"])
    return 0


def _convert(args) -> int:
    src, out = args.released, args.out
    same = os.path.realpath(src) == os.path.realpath(out) or (
        os.path.exists(src) and os.path.exists(out) and os.path.samefile(src, out))
    if same:
        return _error(f"{out}: is the input file; expected a different output path")
    if out.lower().endswith(PICKLE_EXTENSIONS):
        return _error(f"{out}: has a pickle extension; expected a .safetensors output path")
    if os.path.exists(out) and not args.force:
        return _error(f"{out}: exists; pass --force to overwrite it")
    ckpt = import_released(src)
    save_routers(out, ckpt.routers, ckpt.meta)
    c = ckpt.meta.router
    dtype = str(ckpt.routers[0].out[0].weight.dtype).removeprefix("torch.")
    print(f"wrote {out}: {len(ckpt.routers)} routers ({ckpt.meta.family}, dim {c.dim}, hidden {c.hidden}, "
          f"{dtype}), {os.path.getsize(out) / 2**20:.1f} MiB, from {src}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elastic-dit", description="Elastic DiT: inspect and convert router checkpoints, benchmark the engine, "
        "train routers, run the toy demo.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("inspect", help="summarize a router file or an E-DiT checkpoint")
    p.add_argument("file", help="our router .safetensors or the authors' E-DiT model.safetensors")
    p.add_argument("--json", action="store_true", help="print the full summary as JSON")
    p.set_defaults(func=_inspect)
    p = sub.add_parser("convert", help="extract the authors' released routers into our format")
    p.add_argument("released", help="the authors' E-DiT checkpoint (full DiT .safetensors)")
    p.add_argument("out", help="router file to write (.safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=_convert)
    bench.add_parser(sub)
    toy_commands.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (CheckpointError, FileNotFoundError) as e:
        return _error(str(e))


if __name__ == "__main__":
    sys.exit(main())
