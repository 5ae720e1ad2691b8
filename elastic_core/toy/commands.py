"""CLI commands of the toy world: `demo` (the README's main job), `train` (routers), `toy-build`."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from ..results import write_json
from ..train import TrainConfig

E2E_OBJECTIVE = "anchored"  # the documented end-to-end mode (measured best, docs/benchmarks.md)


def _demo(args) -> int:
    import torch

    from .demo import format_demo, run_demo
    torch.set_num_threads(args.threads)  # a tiny model: extra threads only fight over a shared CPU
    r = run_demo(samples=3 if args.quick else args.samples, steps=6 if args.quick else args.steps, out_dir=args.out)
    print(format_demo(r))
    write_json(os.path.join(args.out, "demo.json"), r)
    return 0


def _progress(every: int):
    t0 = time.perf_counter()

    def show(m: dict) -> None:
        if m["step"] % every == 0:
            print(f"step {m['step']:>5}  loss {m['loss']:.5f}  mean gate {m['mean_gate']:.3f}  open {m['open']:.2f}  "
                  f"mean width {m['mean_width']:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return show


def _train_comfy(args) -> int:
    """The engine never imports or launches ComfyUI: ComfyUI models train with ComfyUI's own Python."""
    print("error: routers for a ComfyUI model train inside ComfyUI (the Train Elastic Router node), or from a "
          "terminal with that ComfyUI's Python:\n  python <this pack>/elastic_dit_comfy.py train --comfyui PATH "
          "--workflow API.json [--extra-nodes DIR] [--cpu]", file=sys.stderr)
    return 2


def _train_config(args) -> TrainConfig:
    return TrainConfig(steps=args.steps, lr=args.lr, rho_g=args.rho_g, rho_w=args.rho_w, end_to_end=args.end_to_end,
                       grad_checkpoint=args.grad_checkpoint, backbone_lr=args.backbone_lr,
                       backbone_warmup=args.backbone_warmup, gate_noise=args.gate_noise,
                       train_width=not args.no_width)


def _train(args) -> int:
    if args.comfyui or args.workflow:
        return _train_comfy(args)
    from . import pipeline as P
    from .training import frozen_copy, train_routers
    model = P.load_dit(args.dit) if args.dit else P.load_dit()
    cfg = _train_config(args)
    objective = args.objective if args.end_to_end else "distill"
    # anchored: the target is the ORIGINAL toy DiT, frozen (on resume from a tuned --dit, still the original)
    teacher = frozen_copy(P.load_dit(args.teacher) if args.teacher else P.load_dit()) if objective == "anchored" else None
    stop = {"asked": False}

    def on_sigint(signum, frame):  # Ctrl-C: finish this step, save, and say how to go on
        stop["asked"] = True
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        routers, trainer = train_routers(model, cfg, seed=args.seed, resume=args.resume, progress=_progress(25),
                                         should_stop=lambda: stop["asked"], objective=objective, teacher=teacher,
                                         batch_size=args.batch, bank_size=0 if objective == "data" else args.bank)
    finally:
        signal.signal(signal.SIGINT, previous)
    if stop["asked"]:
        print(f"stopped at step {trainer.step} of {cfg.steps} (Ctrl-C); what was trained is saved")
    trainer.save(args.out + ".state")
    defaults = dict(P.TOY_DEFAULTS)
    P.save_toy_routers(routers, cfg, args.out, objective=objective, defaults=defaults)
    print(f"wrote {args.out} (routers) and {args.out}.state (resume with --resume)")
    if args.end_to_end:  # the backbone trained too: the routers belong to this copy of it
        dit = os.path.splitext(args.out)[0] + ".dit.safetensors"
        P.save_dit(model.eval(), dit, quantize=False)  # fp32: int8 rows would add their own error to the tuning
        print(f"wrote {dit} (the fine-tuned toy DiT, fp32; resume with --dit {dit} --end-to-end --resume {args.out}.state)")
    return 0


def _build(args) -> int:
    import torch

    from . import pipeline as P
    from .training import train_dit, train_routers
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    model = train_dit(steps=args.dit_steps, progress=lambda i, loss: print(
        f"toy DiT step {i:>5}  loss {loss:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True) if i % 100 == 0 else None)
    P.save_dit(model, P.DIT_FILE)
    from .variants import Budget
    budget = Budget(steps=args.router_steps)  # the benchmark's recipe for routers-only training
    cfg = budget.train_config(end_to_end=False)
    routers, _ = train_routers(P.load_dit(), cfg, seed=budget.seed, progress=_progress(50), batch_size=budget.batch,
                               bank_size=budget.bank)
    P.save_toy_routers(routers, cfg, P.ROUTER_FILE)
    print(f"wrote {P.DIT_FILE} and {P.ROUTER_FILE}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="dense vs E-DiT on the built-in toy model (CPU, under a minute)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="3 samples, 6 steps (the test suite's form)")
    p.add_argument("--out", default="demo-output", help="folder for grid.png, heatmap.png, demo.json")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this tiny model on a "
                   "busy CPU; 2 threads on 2 shared cores ran the demo about 8x slower)")
    p.set_defaults(func=_demo)
    p = sub.add_parser("train", help="train routers (on the toy model; ComfyUI models: the Train Elastic Router node)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--rho-g", type=float, default=0.5)
    p.add_argument("--rho-w", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--bank", type=int, default=64, help="distil on the teacher's own guided sampling paths of this "
                   "many captions (0: on noised world images); not used by --objective data")
    p.add_argument("--gate-noise", type=float, default=1.0, help="logistic noise on the gate logits in training "
                   "(0: the plain straight-through gate)")
    p.add_argument("--no-width", action="store_true", help="leave the width head out (every block at full width)")
    p.add_argument("--resume", default=None, help="a .state file saved by an earlier run")
    p.add_argument("--end-to-end", action="store_true", help="train the toy DiT with the routers (the paper's "
                   "second mode); writes the tuned DiT beside the routers")
    p.add_argument("--objective", choices=("anchored", "data"), default=E2E_OBJECTIVE,
                   help="with --end-to-end: distil from a frozen copy of the original DiT (anchored) or the "
                   "flow-matching loss on the toy world's images (data)")
    p.add_argument("--backbone-lr", type=float, default=1e-4, help="with --end-to-end: the DiT's learning rate")
    p.add_argument("--backbone-warmup", type=int, default=50, help="with --end-to-end: steps over which the DiT's "
                   "learning rate ramps up")
    p.add_argument("--dit", default=None, help="the toy DiT to start from (default: the shipped one)")
    p.add_argument("--teacher", default=None, help="with --objective anchored: the frozen DiT to distil from "
                   "(default: the shipped one, also when --dit resumes a tuned copy)")
    p.add_argument("--grad-checkpoint", action="store_true", help="recompute each block in the backward pass")
    p.add_argument("--comfyui", default=None, help="(ComfyUI models: see elastic_dit_comfy.py; this says how)")
    p.add_argument("--workflow", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default="toy_routers.safetensors")
    p.set_defaults(func=_train)
    p = sub.add_parser("toy-build", help="rebuild the shipped toy DiT and its routers (about 95 minutes on 1 core)")
    p.add_argument("--dit-steps", type=int, default=4000)
    p.add_argument("--router-steps", type=int, default=600)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    p.set_defaults(func=_build)

