"""Pictures drawn with Pillow (elastic_core/draw.py) and the toy benchmark's plot: matplotlib where installed,
Pillow otherwise, from the benchmark's own published result (docs/toy-bench.json)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from elastic_core.draw import fit, font, save_png, text_width, wrap
from elastic_core.toy import plot

RESULT = Path(__file__).resolve().parents[2] / "docs" / "toy-bench.json"


def test_fit_and_wrap_keep_text_inside_the_width():
    d, f = ImageDraw.Draw(Image.new("RGB", (1, 1))), font(14)
    name = "diffusion_model.double_blocks.18"
    short = fit(d, name, f, 80)
    assert short.startswith("...") and short.endswith("blocks.18") and text_width(d, short, f) <= 80
    assert fit(d, "tau", f, 80) == "tau"
    lines = wrap(d, "Your Qwen-Image + the release as routers and a LoRA, with a long tail of words", f, 150, 2)
    assert len(lines) == 2 and all(text_width(d, ln, f) <= 150 for ln in lines) and lines[-1].endswith("...")


def test_save_png_round_trip(tmp_path):
    rgb = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
    save_png(str(tmp_path / "a.png"), rgb)
    assert (np.asarray(Image.open(tmp_path / "a.png").convert("RGB")) == rgb).all()


def _check_png(path: Path, min_size=(900, 400)):
    img = Image.open(path)
    assert img.format == "PNG" and img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
    colors = np.asarray(img.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(colors[::7], axis=0)) > 20, "hardly anything drawn"


def test_plot_with_pillow(tmp_path):
    res = json.loads(RESULT.read_text())
    _check_png(Path(plot.plot_pillow(res, str(tmp_path / "p.png"))))


def test_plot_falls_back_to_pillow_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    res = json.loads(RESULT.read_text())
    out = Path(plot.plot(res, str(tmp_path / "p.png")))
    _check_png(out)
    assert Image.open(out).size == (2 * plot.PANEL[0], Image.open(out).size[1]), "not the Pillow figure"


def test_plot_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is optional (pip install -e '.[plots]')")
    res = json.loads(RESULT.read_text())
    _check_png(Path(plot.plot(res, str(tmp_path / "p.png"))))
