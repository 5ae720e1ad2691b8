"""The released routers' MLP activation (x * sigmoid(1.702 x)): named in the router file, kept by
`convert`, inferred for files converted before the key existed, and refused when unknown."""
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from elastic_core import checkpoint as ck
from elastic_core.checkpoint import RouterMeta, describe, import_released, load_routers, save_routers
from elastic_core.cli import main
from elastic_core.elastic_mlp import MLP_ACTIVATIONS, MLPLayout, elastic_mlp, module_weights, quick_gelu

from .test_checkpoint import make_meta, make_routers, raises, write_released


def test_quick_gelu_is_the_authors_formula_and_not_tanh_gelu():
    x = torch.linspace(-6, 6, 1001)
    assert torch.equal(quick_gelu(x), x * torch.sigmoid(1.702 * x))
    assert (quick_gelu(x) - F.gelu(x, approximate="tanh")).abs().max() > 1e-2  # a real difference
    assert MLP_ACTIVATIONS["quick_gelu"] is quick_gelu


def test_elastic_mlp_full_width_with_another_activation_is_the_full_mlp():
    torch.manual_seed(0)
    fc1, fc2, x = torch.nn.Linear(8, 32), torch.nn.Linear(32, 8), torch.randn(2, 5, 8)
    got = elastic_mlp(x, module_weights(fc1), module_weights(fc2), quick_gelu, MLPLayout(32), 1.0)
    assert torch.allclose(got, fc2(quick_gelu(fc1(x))), atol=1e-6)


def test_released_import_asks_for_the_authors_activation(tmp_path):
    ckpt = import_released(write_released(tmp_path / "model.safetensors"))
    assert ckpt.meta.mlp_activation == "quick_gelu"
    assert describe(ckpt)["mlp_activation"] == "quick_gelu"


def test_convert_keeps_it(tmp_path, capsys):
    src = write_released(tmp_path / "model.safetensors")
    out = tmp_path / "routers.safetensors"
    assert main(["convert", str(src), str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["mlp_activation"] == "quick_gelu"
    assert load_routers(out).meta.mlp_activation == "quick_gelu"
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    assert "model MLPs  quick_gelu" in capsys.readouterr().out


def test_trained_routers_use_the_models_own(tmp_path):
    routers = make_routers()
    save_routers(tmp_path / "r.safetensors", routers, make_meta(routers))
    with safe_open(str(tmp_path / "r.safetensors"), framework="pt") as f:
        assert "mlp_activation" not in f.metadata()
    assert load_routers(tmp_path / "r.safetensors").meta.mlp_activation is None


def _rewrite(path, edit):
    with safe_open(str(path), framework="pt") as f:
        md, t = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    save_file(t, str(path), metadata=edit(md))


def test_files_converted_before_the_key_existed_still_get_it(tmp_path):
    src, out = write_released(tmp_path / "model.safetensors"), tmp_path / "routers.safetensors"
    assert main(["convert", str(src), str(out)]) == 0
    _rewrite(out, lambda md: {k: v for k, v in md.items() if k != "mlp_activation"})
    assert load_routers(out).meta.mlp_activation == "quick_gelu"


def test_unknown_activation_refused_naming_the_file(tmp_path):
    routers = make_routers()
    path = tmp_path / "r.safetensors"
    save_routers(path, routers, make_meta(routers))
    _rewrite(path, lambda md: {**md, "mlp_activation": "swish9"})
    raises(path, "mlp_activation", "swish9", "quick_gelu")
    with pytest.raises(ValueError, match="mlp_activation"):
        RouterMeta.for_routers(routers, "flux", mlp_activation="relu6")


def test_round_trip(tmp_path):
    routers = make_routers()
    meta = make_meta(routers, mlp_activation="quick_gelu")
    save_routers(tmp_path / "r.safetensors", routers, meta)
    assert load_routers(tmp_path / "r.safetensors").meta == meta
    assert ck.router_metadata(meta)["mlp_activation"] == "quick_gelu"
