"""`elastic-dit`: look into router checkpoints and convert the authors' release to our format.

    elastic-dit inspect FILE [--json]
    elastic-dit convert RELEASED.safetensors OUT.safetensors [--force]
                        [--base BASE.safetensors --lora-rank R [--lora-out LORA.safetensors]]
    elastic-dit bench ...            (registered by elastic_core/bench.py when it exists)

Every subcommand sets `func(args) -> int`; a CheckpointError becomes `error: <message>`, exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections import Counter

from . import bench
from .argtypes import COUNT
import torch

from .checkpoint import PICKLE_EXTENSIONS, CheckpointError, describe, load_routers, read_header, released_plan
from .lora_extract import check_base, extract_lora, stream_routers
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
    rank = f" (modulation rank {info['mod_rank']})" if info["mod_rank"] else ""
    print(f"  layout      {info['layout']}{rank}, {info['router_parameters']:,} parameters per router")
    print(f"  widths      {', '.join(_fmt(w) for w in info['widths'])}")
    act = info["mlp_activation"]
    print("  model MLPs  " + (f"{act}: the released DiT's x*sigmoid(1.702x); Apply runs it by default" if act
                              else "the model's own activation"))
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


def _same(a: str, b: str) -> bool:
    """Whether two paths name one file: the same resolved path (symlinks, relative paths) or a hard link."""
    return os.path.realpath(a) == os.path.realpath(b) or (
        os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def _refuse_out(out: str, inputs: list[str], others: list[str], force: bool, safetensors: bool = True) -> str | None:
    """Why output `out` cannot be written (it names an input or another output, it exists without
    --force, a pickle name), or None."""
    if any(_same(src, out) for src in inputs):
        return f"{out}: is an input file; expected a different output path"
    if any(_same(o, out) for o in others):
        return f"{out}: is another output of this command; expected a different path"
    if safetensors and out.lower().endswith(PICKLE_EXTENSIONS):
        return f"{out}: has a pickle extension; expected a .safetensors output path"
    if os.path.exists(out) and not force:
        return f"{out}: exists; pass --force to overwrite it"
    return None


def _outputs(args) -> dict[str, str]:
    """{role: path} of everything convert writes: the router file, the LoRA and the report."""
    out = {"routers": args.out}
    if args.base:
        out["lora"] = args.lora_out or os.path.splitext(args.out)[0] + "-lora.safetensors"
    if args.report:
        out["report"] = args.report
    return out


def _folder_problem(path: str) -> str | None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"{path}: the folder {folder} does not exist; expected an existing folder"
    if not os.access(folder, os.W_OK):
        return f"{path}: the folder {folder} is not writable; expected a folder this user can write to"
    return None


class _Staged:
    """All outputs or none: each output is written to a temp name in its own folder (so the final
    rename stays on one file system), and renamed over the output only once every output is written.
    On any failure the temp files go, the outputs stay as they were, and an OSError names the output
    the user asked for, not the temp name."""

    def __init__(self, outputs: dict[str, str]):
        self.final = outputs
        self.tmp = {role: os.path.join(os.path.dirname(os.path.abspath(p)),
                                       f".{os.path.basename(p)}.{uuid.uuid4().hex[:8]}.partial")
                    for role, p in outputs.items()}

    def __enter__(self) -> dict[str, str]:
        return self.tmp

    def commit(self) -> None:
        for role, tmp in self.tmp.items():
            os.replace(tmp, self.final[role])

    def __exit__(self, kind, exc, tb):
        for tmp in self.tmp.values():
            for p in (tmp, tmp + ".partial", tmp + ".data.partial"):  # StreamWriter's side files too
                if os.path.exists(p):
                    os.remove(p)
        name = str(getattr(exc, "filename", None) or "")
        user = next((self.final[r] for r, t in self.tmp.items() if name.startswith(t)), None)
        if isinstance(exc, OSError) and user is not None:
            raise CheckpointError(f"{user}: could not be written ({exc.strerror or exc}); nothing was written") from exc
        return False


def _convert(args) -> int:
    src, out = args.released, args.out
    if args.lora_rank is not None and not args.base:
        return _error("--lora-rank needs --base (the base model the release was fine-tuned from)")
    if args.report and not args.base:
        return _error("--report needs --base (it holds the error of the LoRA)")
    outputs = _outputs(args)
    inputs = [src] + ([args.base] if args.base else [])
    paths = list(outputs.values())
    for i, path in enumerate(paths):
        why = _refuse_out(path, inputs, paths[:i], args.force, safetensors=path != args.report) or _folder_problem(path)
        if why:
            return _error(why)
    released_plan(src)  # every header check first: nothing is written for a bad input
    rank = 64 if args.lora_rank is None else args.lora_rank
    if args.base:
        if rank < 1:
            return _error(f"--lora-rank {rank}: expected at least 1")
        check_base(src, args.base)
    lora_out = outputs.get("lora")
    staged = _Staged(outputs)
    with staged as tmp:
        meta = stream_routers(src, tmp["routers"], {"lora": os.path.basename(lora_out)} if lora_out else None)
        dtype = read_header(tmp["routers"]).tensors["routers.0.out.0.weight"]["dtype"].lower()
        report = _convert_lora(args, src, tmp, rank, os.path.basename(out)) if args.base else None
        staged.commit()
    c = meta.router
    print(f"wrote {out}: {len(meta.block_names)} routers ({meta.family}, dim {c.dim}, hidden {c.hidden}, "
          f"{dtype}), {os.path.getsize(out) / 2**20:.1f} MiB, from {src}")
    if report is not None:
        _print_lora(report, lora_out, rank, args)
    return 0


def _convert_lora(args, src: str, tmp: dict[str, str], rank: int, router_file: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.lora_dtype]
    report = extract_lora(src, args.base, tmp["lora"], rank, router_file, dtype, power_iters=args.power_iters,
                          log=lambda line: print(f"  {line}", flush=True))
    if "report" in tmp:
        with open(tmp["report"], "x") as f:
            json.dump({"total": report.total(), "layers": report.layers, "diffs": report.diffs}, f, indent=1)
    return report


def _print_lora(report, lora_out: str, rank: int, args) -> None:
    t = report.total()
    print(f"wrote {lora_out}: LoRA rank {t['rank']} ({args.lora_dtype}) on {t['layers']} weights + {t['diffs']} "
          f"whole diffs (biases, norms), {os.path.getsize(lora_out) / 2**20:.1f} MiB; {t['unchanged']} tensors unchanged")
    small = sum(x["rank"] < rank for x in report.layers)
    if small:
        print(f"  {small} weights are smaller than --lora-rank {rank}: they are stored at their full rank "
              f"(at most {t['rank']}), exact up to {args.lora_dtype}")
    print(f"relative error of the LoRA: {t['rel_error']:.4f} of ||released - base|| in total, as written in "
          f"{args.lora_dtype} ({t['rel_to_weights']:.2e} of ||released||; whole diffs {t['diff_rel_error']:.1e}); "
          "worst layers:")
    for x in sorted(report.layers, key=lambda x: -x["rel_error"])[:5]:
        print(f"  {x['key']}: {x['rel_error']:.4f}")
    if args.report:
        print(f"wrote {args.report} (the error of every layer)")
    if not t["layers"] and not t["diffs"]:
        print(f"warning: the release's backbone equals the base {args.base}: {lora_out} is empty (the release changed "
              "only its routers, or --base is the release itself); the router file alone does the same",
              file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elastic-dit", description="Elastic DiT: inspect and convert router checkpoints, benchmark the engine, "
        "train routers, run the toy demo.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("inspect", help="summarize a router file or an E-DiT checkpoint")
    p.add_argument("file", help="our router .safetensors or the authors' E-DiT model.safetensors")
    p.add_argument("--json", action="store_true", help="print the full summary as JSON")
    p.set_defaults(func=_inspect)
    p = sub.add_parser("convert", help="extract the authors' released routers into our format (with --base: "
                       "and the fine-tuned backbone as a LoRA on the base model)")
    p.add_argument("released", help="the authors' E-DiT checkpoint (full DiT .safetensors)")
    p.add_argument("out", help="router file to write (.safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite OUT, the LoRA file and the report if they exist "
                   "(never an input)")
    p.add_argument("--base", default=None, help="the base model the release was fine-tuned from (Qwen-Image, "
                   "unquantized .safetensors): also write a LoRA holding the low-rank part of released - base")
    p.add_argument("--lora-rank", type=int, default=None, help="rank of that LoRA (default 64)")
    p.add_argument("--lora-out", default=None, help="the LoRA file (default: OUT's name with -lora)")
    p.add_argument("--lora-dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="dtype of the LoRA's "
                   "tensors (default bf16: half of fp32's size, ~3 significant digits; the error reported is the file's)")
    p.add_argument("--power-iters", type=COUNT, default=2, help="power iterations of the randomized SVD")
    p.add_argument("--report", default=None, help="write every layer's error to this JSON file")
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
