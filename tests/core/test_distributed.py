"""`elastic-dit train` under torchrun: 2 processes (gloo, CPU), each with half of the global batch,
train the same routers as one process with the whole batch (DDP all-reduces the gradients; the
budget losses read global means). Tiny: 3 steps of 8 trajectory states from a bank of 4 captions."""
import os
import subprocess
import sys

import pytest
import torch

from safetensors.torch import load_file

from elastic_core.checkpoint import load_routers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = ["-m", "elastic_core.cli", "train", "--steps", "3", "--batch", "8", "--bank", "4", "--gate-noise", "0"]


def _run(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p


@pytest.mark.parametrize("layout", ["compact"])
def test_two_processes_equal_one_with_the_global_batch(tmp_path, layout):
    if not torch.distributed.is_gloo_available():
        pytest.skip("this torch has no gloo backend")
    one, two = str(tmp_path / "one.safetensors"), str(tmp_path / "two.safetensors")
    _run(TRAIN + ["--router-layout", layout, "--out", one], tmp_path)
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run(torchrun + TRAIN + ["--router-layout", layout, "--out", two], tmp_path)
    assert load_routers(two).meta.router.layout == layout
    # the fp32 routers of the training states (the router files hold them in fp16)
    a, b = ({k[8:]: v for k, v in load_file(f + ".state").items() if k.startswith("routers.")} for f in (one, two))
    assert set(a) == set(b) and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=k)
    # the run trained (not two untouched copies of the start): the gate biases moved from the open init
    from elastic_core.toy.pipeline import load_dit
    from elastic_core.toy.training import new_routers
    start = new_routers(load_dit(), 0, layout).state_dict()
    assert any((a[k] - start[k]).abs().max() > 1e-4 for k in a)


def test_a_batch_that_does_not_split_is_refused(tmp_path):
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, *torchrun, "-m", "elastic_core.cli", "train", "--steps", "1", "--batch", "6",
                        "--out", str(tmp_path / "x.safetensors")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode != 0 and "does not split over 2 processes" in p.stderr
    assert not os.path.exists(tmp_path / "x.safetensors")
