"""Memory of `elastic-dit convert --base` on a synthetic released-layout pair (Qwen-Image key names).

    python -m devtools.convert_memory [--blocks 64] [--dim 512] [--rank 16] [--delta-rank 8] [--dir DIR] [--check]

A benchmark, not a test: 64 blocks peak at about 8 GB of process memory (the torch profiler's records
of every operation, not the conversion's). The test suite runs the same check on 2 blocks.

Builds BASE and RELEASED (= BASE + a rank-`delta-rank` change per weight, changed biases, routers
under gate_mlps) tensor by tensor, then converts them in a fresh process and reports, above the memory
in use before the conversion:
- torch: the exact peak of the torch CPU allocator (the profiler's memory events, summed in time order);
- python: the peak of Python's own allocations (tracemalloc: the buffers safetensors reads into);
- rss_anon: the peak anonymous resident memory, sampled every millisecond (everything, roughly);
each also as a multiple of the largest single tensor in the files. Tensor data is what `torch` counts;
Python's share is bookkeeping (the files' parsed headers, the LoRA's header, the per-layer report),
which grows with the number of tensors, not their size.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc

import torch

from elastic_core.checkpoint import read_header
from elastic_core.lora_extract import StreamWriter, extract_lora, stream_routers

def block_shapes(d: int) -> dict[str, tuple[int, ...]]:
    """One Qwen-Image transformer block's tensors at width d."""
    s = {"img_mod.1.weight": (6 * d, d), "img_mod.1.bias": (6 * d,), "txt_mod.1.weight": (6 * d, d),
         "txt_mod.1.bias": (6 * d,), "attn.norm_q.weight": (d // 8,), "attn.norm_k.weight": (d // 8,)}
    for k in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
        s[f"attn.{k}.weight"], s[f"attn.{k}.bias"] = (d, d), (d,)
    for m in ("img_mlp", "txt_mlp"):
        s[f"{m}.net.0.proj.weight"], s[f"{m}.net.0.proj.bias"] = (4 * d, d), (4 * d,)
        s[f"{m}.net.2.weight"], s[f"{m}.net.2.bias"] = (d, 4 * d), (d,)
    return s


def router_shapes(d: int, h: int = 128) -> dict[str, tuple[int, ...]]:
    return {"img_mod.1.weight": (3 * d, d), "img_mod.1.bias": (3 * d,), "out.0.weight": (h, d), "out.0.bias": (h,),
            "out.2.weight": (1, h), "out.2.bias": (1,), "width_head.weight": (4, h), "width_head.bias": (4,)}


def _pair(key: str, shape, delta_rank: int, full: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, released) for one key: a rank-`delta_rank` change of a matrix (full rank if `full`)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g) * 0.02
    if len(shape) == 2:
        k = min(shape) if full else delta_rank
        delta = (torch.randn(shape[0], k, generator=g) @ torch.randn(k, shape[1], generator=g)) * (0.01 / k ** 0.5)
    else:
        delta = torch.randn(shape, generator=g) * 0.001
    return base, base + delta


def write_pair(folder: str, blocks: int, dim: int, delta_rank: int = 8, full: bool = False,
               dtype=torch.bfloat16, prefix: str = "") -> tuple[str, str, int]:
    """-> (base path, released path, bytes of the largest single tensor)."""
    base_p, rel_p = os.path.join(folder, "base.safetensors"), os.path.join(folder, "released.safetensors")
    wb, wr = StreamWriter(base_p), StreamWriter(rel_p)
    largest, seed, size = 0, 0, torch.empty(0, dtype=dtype).element_size()
    for i in range(blocks):
        for sub, shape in block_shapes(dim).items():
            seed += 1
            b, r = _pair(f"transformer_blocks.{i}.{sub}", shape, delta_rank, full, seed)
            wb.add(f"transformer_blocks.{i}.{sub}", b.to(dtype))
            wr.add(f"{prefix}transformer_blocks.{i}.{sub}", r.to(dtype))
            largest = max(largest, b.numel() * size)
    for i in range(blocks):
        g = torch.Generator().manual_seed(10_000 + i)
        for sub, shape in router_shapes(dim).items():
            wr.add(f"{prefix}gate_mlps.{i}.{sub}", (torch.randn(shape, generator=g) * 0.02).to(dtype))
    wb.close({})
    wr.close({})
    return base_p, rel_p, largest


RSS_NOISE = 256 * 1024  # slack for the sampled RSS (see check); reading whole tensors adds ~6x the largest


class _RssAnon:
    """Peak anonymous resident memory above the start, sampled every millisecond."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        self.base = self.now()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now() - self.base)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _torch_peak(prof, mapped: set[int]) -> int:
    """Peak of the allocator's running total; `mapped`: sizes of the files safetensors maps (file pages, not
    allocations: counted by neither RssAnon nor this)."""
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and abs(e.nbytes()) not in mapped)
    cur = peak = 0
    for _, n in events:
        cur += n
        peak = max(peak, cur)
    return peak


def measure(fn, files=()) -> dict:
    """Peaks of fn() above the start (bytes), each from its own run so no meter counts another's memory.
    Anonymous RSS first: in a fresh process its first conversion must grow the heap (later runs reuse it)."""
    from torch.profiler import ProfilerActivity, profile
    with _RssAnon() as rss:
        fn()
    tracemalloc.start()
    py0 = tracemalloc.get_traced_memory()[0]
    fn()
    py = tracemalloc.get_traced_memory()[1] - py0
    tracemalloc.stop()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return {"rss_anon": rss.peak, "python": py, "torch": _torch_peak(prof, {os.path.getsize(f) for f in files})}


def _warm_up() -> None:
    """Load the linear-algebra libraries (one-off memory that is not the conversion's)."""
    x = torch.randn(64, 32)
    torch.linalg.svd(torch.linalg.qr(x).Q.T @ x, full_matrices=False)


def convert(base: str, released: str, folder: str, rank: int) -> dict:
    out, lora = os.path.join(folder, "routers.safetensors"), os.path.join(folder, "lora.safetensors")
    result = {}

    def run():
        stream_routers(released, out, {"lora": "lora.safetensors"})
        result["report"] = extract_lora(released, base, lora, rank, "routers.safetensors")
    _warm_up()
    peaks = measure(run, (base, released))
    return {**peaks, "report": result["report"].total()}


def check(r: dict) -> list[str]:
    """The bounds a streamed conversion keeps (empty: all kept). Tensor data alive at once (the torch
    allocator's exact peak) under 2x the largest tensor: reading whole tensors (released + base + their
    float32 difference: 6x for bf16) would break it. The whole process (anonymous RSS) under that plus the
    bookkeeping, which grows with the tensor count (headers: ~2 KB a tensor), not with their size, plus
    RSS_NOISE: the sampled RSS of one small conversion moved by up to ~50 KB from run to run (allocator
    arenas, the sampling thread), which at 2 blocks of width 128 is a quarter of the largest tensor."""
    bad = []
    if r["torch_x_largest"] > 2.0:
        bad.append(f"tensor data peak {r['torch_x_largest']:.2f}x the largest tensor; expected <= 2x")
    allowed = 2 * r["largest_tensor"] + 4096 * r["tensors"] + RSS_NOISE
    if r["rss_anon"] > allowed:
        bad.append(f"anonymous RSS peak {r['rss_anon']} B; expected <= {allowed} B (2x the largest tensor + 4 KiB a "
                   f"tensor + {RSS_NOISE // 1024} KiB of measurement noise)")
    return bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.convert_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=64)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--delta-rank", type=int, default=8)
    p.add_argument("--dir", default=None)
    p.add_argument("--check", action="store_true", help="exit 1 unless the memory bounds hold (see check())")
    p.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # the child: convert the pair in this folder
    a = p.parse_args(argv)
    if a.measure:
        print(json.dumps(convert(os.path.join(a.measure, "base.safetensors"),
                                 os.path.join(a.measure, "released.safetensors"), a.measure, a.rank)))
        return 0
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        t0 = time.perf_counter()
        _, rel, largest = write_pair(d, a.blocks, a.dim, a.delta_rank)
        built, t0 = time.perf_counter() - t0, time.perf_counter()
        child = subprocess.run([sys.executable, "-m", "devtools.convert_memory", "--measure", d, "--rank", str(a.rank)],
                               capture_output=True, text=True, check=True)  # a fresh process: a heap not yet grown
        r = json.loads(child.stdout.strip().splitlines()[-1])
        tensors = sum(len(read_header(f).tensors) for f in (rel, os.path.join(d, "base.safetensors")))
        r.update({"largest_tensor": largest, "tensors": tensors, "blocks": a.blocks, "dim": a.dim, "rank": a.rank,
                  "file_bytes": os.path.getsize(rel), "build_s": built, "convert_3_runs_s": time.perf_counter() - t0})
    for k in ("torch", "python", "rss_anon"):
        r[k + "_x_largest"] = r[k] / largest
    print(json.dumps(r, indent=1))
    if a.check:
        bad = check(r)
        print("check: " + ("; ".join(bad) if bad else "the memory bounds hold"))
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
