"""The ComfyUI side of the command line: run a workflow (API format) in a ComfyUI without its server,
which is how routers for a ComfyUI-loadable model are trained from a terminal or a job queue.

    python elastic_dit_comfy.py train --comfyui PATH --workflow FILE [--extra-nodes DIR ...] [--cpu]
    torchrun --nproc_per_node N elastic_dit_comfy.py train ...    (N GPUs: DDP, rank 0 saves)

Run it with the Python of that ComfyUI (the engine's `elastic-dit` command never imports ComfyUI). The
workflow is the graph a user would queue (loaders, text encoders, Train Elastic Router, and anything
else); ComfyUI's own loader, validator and executor run it, with this pack and ComfyUI's extra nodes
loaded, so nothing of the Train node is re-implemented here.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import uuid

PACK_ROOT = os.path.dirname(os.path.abspath(__file__))


class _Console:
    """What the executor needs of ComfyUI's PromptServer: no client, so nothing is sent; progress logs."""
    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        if event == "execution_error":
            logging.error("node %s (%s) failed: %s", data.get("node_id"), data.get("node_type"),
                          data.get("exception_message"))

    def queue_updated(self):
        pass


def _read_prompt(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if "nodes" in data and "links" in data:
        raise SystemExit(f"{path} is a UI workflow; export it in API format (Workflow > Export (API) in ComfyUI)")
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        raise SystemExit(f"{path}: expected an API-format workflow ({{node id: {{class_type, inputs}}}})")
    return data


def _executor(execution):
    """ComfyUI's executor with the classic cache (an output is dropped once nothing needs it: a one-shot run
    wants no more), built as each version's main.py builds it for `--cache-classic`. The cache arguments
    are given as numbers, not read from ComfyUI's command line: `--cache-ram` is one float up to 0.8 and a
    list of up to two (active, inactive GB) in 0.33, which reads `ram` and `ram_inactive` with int()."""
    import inspect
    params = inspect.signature(execution.PromptExecutor).parameters
    if "cache_args" in params:  # 0.4+; "ram_inactive" is read from 0.33 on, ignored before
        return execution.PromptExecutor(_Console(), cache_args={"lru": 0, "ram": 0.0, "ram_inactive": 0.0})
    return execution.PromptExecutor(_Console(), cache_size=0)  # 0.3.x


def run(comfyui: str, workflow: str, extra_nodes: list[str], cpu: bool) -> int:
    sys.path[:] = [p for p in sys.path if os.path.abspath(p) != PACK_ROOT]  # the pack's nodes/ must not shadow ComfyUI's nodes.py
    sys.path.insert(0, comfyui)
    os.chdir(comfyui)
    import utils.extra_config  # noqa: F401  ComfyUI's `utils` package, imported first as its main.py does
    from comfy.cli_args import args
    args.cpu = args.cpu or cpu
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not args.cpu:  # torchrun: this process's GPU
        import torch
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # ComfyUI then loads models there
    import execution
    import nodes

    prompt = _read_prompt(workflow)
    failed = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)) or []
    if "nodes_replacements.py" in failed:  # ComfyUI 0.33: it registers with the web server, which is not started here
        logging.info("(nodes_replacements.py only registers node replacements with ComfyUI's web server, which a "
                     "headless run does not start: not needed to run the workflow)")
    for d in [PACK_ROOT, *extra_nodes]:
        if not asyncio.run(nodes.load_custom_node(d)):
            raise SystemExit(f"ComfyUI could not load the custom nodes in {d} (see the log above)")
    prompt_id = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0]:
        raise SystemExit(f"{workflow}: the workflow does not validate: {json.dumps(valid[1])} {json.dumps(valid[3])}")
    executor = _executor(execution)
    executor.execute(prompt, prompt_id, {}, valid[2])
    if not executor.success:
        msgs = [m for m in executor.status_messages if m[0] in ("execution_error", "execution_interrupted")]
        logging.error("the workflow did not finish: %s", msgs[-1][1] if msgs else "unknown error")
        return 1
    logging.info("the workflow ran to the end")
    return 0


def _comfyui_folder(text: str) -> str:
    """--comfyui: a ComfyUI checkout (its main.py, nodes.py and comfy/ package), as an absolute path."""
    path = os.path.abspath(text)
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text}: not a folder; expected the ComfyUI folder (the one holding main.py)")
    missing = [n for n in ("main.py", "nodes.py", "comfy") if not os.path.exists(os.path.join(path, n))]
    if missing:
        raise argparse.ArgumentTypeError(f"{text}: no {', '.join(missing)} there; expected the ComfyUI folder "
                                         "(the one holding main.py)")
    return path


def _existing(kind: str):
    def parse(text: str) -> str:
        ok = os.path.isdir(text) if kind == "folder" else os.path.isfile(text)
        if not ok:
            raise argparse.ArgumentTypeError(f"{text}: not a {kind}")
        return os.path.abspath(text)
    parse.__name__ = kind
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="elastic_dit_comfy.py", description=__doc__.split("\n\n")[0].replace("\n", " "),
                                epilog="Run it with the Python of that ComfyUI (the engine's `elastic-dit` command "
                                "never imports ComfyUI).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    t = sub.add_parser("train", help="run an API-format workflow holding Train Elastic Router",
                       description="Run an API-format workflow that holds Train Elastic Router in a ComfyUI, without "
                       "its server: ComfyUI's own loader, validator and executor run it with this pack loaded.")
    t.add_argument("--comfyui", required=True, type=_comfyui_folder,
                   help="the ComfyUI folder (run this script with its Python)")
    t.add_argument("--workflow", required=True, type=_existing("file"),
                   help="the workflow, exported with Workflow > Export (API)")
    t.add_argument("--extra-nodes", action="append", default=[], type=_existing("folder"),
                   help="more custom-node folders to load (repeat for several)")
    t.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(a.comfyui, a.workflow, a.extra_nodes, a.cpu)

if __name__ == "__main__":
    sys.exit(main())
