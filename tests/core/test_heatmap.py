"""Record -> heatmap payload, what-if replay, raster picture."""
import json

import numpy as np

from elastic_core import heatmap
from elastic_core.reference import double_run_fn
from elastic_core.runner import run_stack
from elastic_core.stats import REUSE, RUN, SKIP
from tests.core.helpers import begin, force, inputs, make_stack, start


def _record(steps=4, tau=0.5, delta=0.015, k=2, unreached=()):
    """unreached: steps a step cache in front of the model answered (no block call)."""
    blocks, routers = make_stack(3)
    force(routers[0], p=0.2)
    force(routers[1], p=0.505, width_idx=1)
    run = start(blocks, routers, num_steps=steps, cache_start=0.25, tau=tau, delta=delta, max_reuse=k)
    img, txt, vec = inputs(b=2)
    if unreached:
        run.unreached({s: (1 - s / steps, s / steps >= 0.25) for s in unreached})  # no effect before any call
    for s in range(steps):
        if s in unreached:
            continue
        begin(run, s, sigma=1 - s / steps)
        run_stack(run, [double_run_fn(b, vec) for b in blocks], {"img": img, "txt": txt}, vec,
                  row_keys=[("uncond", 0), ("cond", 0)])
    if unreached:
        run.unreached({s: (1 - s / steps, s / steps >= 0.25) for s in range(steps)})
    return run.finish()


def test_steps_that_never_reached_the_model_count_as_skipped_in_record_heatmap_and_compute():
    """A step cache in front (EasyCache) answered step 2: its rows are every block skipped, p None, the
    dense cost counted with nothing executed; the heatmap and its what-if count it the same way."""
    full, cut = _record(), _record(unreached=(2,))
    assert sorted(set(cut.events["step"])) == [0, 1, 2, 3] and len(cut) == len(full)
    at2 = [j for j in range(len(cut)) if cut.events["step"][j] == 2]
    assert len(at2) == 3 * 2 and all(cut.events["action"][j] == SKIP and cut.events["p"][j] is None for j in at2)
    assert cut.flops["dense_attn"] == full.flops["dense_attn"] and cut.flops["dense_mlp"] == full.flops["dense_mlp"]
    assert cut.flops["exec_mlp"] < full.flops["exec_mlp"] and cut.flops["router"] == full.flops["router"] * 3 / 4
    assert cut.counts()["skip"] == full.counts()["skip"] + sum(full.events["action"][j] != SKIP
                                                               for j in range(len(full)) if full.events["step"][j] == 2)
    pl = heatmap.payload(cut)
    json.dumps(pl)
    for view in range(len(pl["views"])):
        w = heatmap.what_if(pl, view, 0.5, 0.015, 2)
        assert all(row[2] == SKIP for row in w["action"])
    t = pl["summary"]
    both = [heatmap.what_if(pl, v, 0.5, 0.015, 2) for v in range(2)]
    assert sum(w["skipped"] for w in both) / 2 == t["skipped"]
    assert heatmap.render(pl).shape[0] > 0


def test_payload_grids_match_events():
    rec = _record()
    pl = heatmap.payload(rec)
    json.dumps(pl)
    assert [(v["stream"], v["sample"]) for v in pl["views"]] == [("cond", 0), ("uncond", 0)]
    v = pl["views"][0]
    assert len(v["p"]) == 3 and all(len(row) == 4 for row in v["p"])
    assert all(a == SKIP for a in v["action"][0])
    assert v["action"][1] == [RUN, RUN, REUSE, REUSE]  # step 0 outside the window; then run, reuse x K
    assert v["width"][1][0] == 0.5 and v["reuse"][1][3] == 2
    assert [s["cache"] for s in pl["steps"]] == [False, True, True, True]
    assert len(pl["costs"]) == 3 and pl["costs"][2][-1] > pl["costs"][2][0] > 0


def test_what_if_reproduces_the_run_at_its_own_settings():
    """Same decisions, and the record's executed compute, routers included (summed over the views)."""
    rec = _record()
    pl = heatmap.payload(rec)
    spent = dense = 0.0
    for i, v in enumerate(pl["views"]):
        same = heatmap.what_if(pl, i, 0.5, 0.015, 2)
        assert same["action"] == v["action"]
        n = sum(x is not None for row in v["p"] for x in row)
        view_dense = n / len(v["p"]) * sum(c[-1] for c in pl["costs"])
        spent += same["executed_fraction"] * view_dense
        dense += view_dense
    assert abs(spent / dense - rec.totals()["executed_fraction"]) < 1e-9
    assert rec.flops["router"] > 0


def test_what_if_moves_with_the_knobs():
    pl = heatmap.payload(_record())
    lower = heatmap.what_if(pl, 0, 0.1, 0.015, 2)  # nothing below tau any more
    assert lower["skipped"] == 0 and lower["executed_fraction"] > heatmap.what_if(pl, 0, 0.5, 0.015, 2)["executed_fraction"]
    no_band = heatmap.what_if(pl, 0, 0.5, 0.0, 2)
    assert no_band["reused"] == 0
    k1 = heatmap.what_if(pl, 0, 0.5, 0.015, 1)
    assert k1["action"][1] == [RUN, RUN, REUSE, RUN]


def test_render_draws_every_cell_with_the_palette():
    pl = heatmap.payload(_record())
    img = heatmap.render(pl, 0)
    assert img.dtype == np.uint8 and img.shape == (3 * 8 + 18, 64, 3)
    skip_cell = img[1:8, 1:12].reshape(-1, 3).mean(0)
    run_cell = img[9:16, 13:24].reshape(-1, 3)
    assert skip_cell.max() < 80  # veiled dark
    assert (run_cell == heatmap._hex(heatmap.PALETTE["width"]).astype(np.uint8)).all(1).any()  # width bar


def test_step_column_and_header():
    rec = _record()
    col = heatmap.step_column(rec, 0, 2)
    assert col["step"] == 2 and col["cache"] and len(col["views"]) == 2
    assert col["views"][0]["action"][1] == REUSE
    assert heatmap.live_header(rec)["num_steps"] == 4


def _ink(img, box):
    """Pixels in box (y0, y1, x0, x1) brighter than the background: text or marks (text is anti-aliased)."""
    y0, y1, x0, x1 = box
    return (img[y0:y1, x0:x1].astype(int).sum(-1) > 3 * 0x40).sum()


def test_picture_has_names_axis_and_legend():
    pl = heatmap.payload(_record())
    img = heatmap.picture(pl, 0, scale=2)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    grid = heatmap.render(pl, 0, cell=(24, 16), legend=0)
    # the grid sits below the two text lines, right of the labels: find it by its exact pixels
    h, w = grid.shape[:2]
    hits = [(y, x) for y, x in np.argwhere((img == grid[0, 0]).all(-1))
            if y + h <= img.shape[0] and x + w <= img.shape[1] and (img[y:y + h, x:x + w] == grid).all()]
    assert len(hits) == 1, "the grid is not pasted whole"
    top, left = hits[0]
    assert _ink(img, (0, top, 0, img.shape[1])) > 200, "no title / summary"
    for b in range(3):  # a block name in every row of the label column
        assert _ink(img, (top + b * 16, top + (b + 1) * 16, 0, left)) > 20, f"no label for block {b}"
    below = top + h
    assert _ink(img, (below, below + 18, left, left + w)) > 20, "no step numbers"
    legend = img[below + 18:]
    red = np.array([int(heatmap.PALETTE["tau"][i:i + 2], 16) for i in (1, 3, 5)])
    white = np.array([255, 255, 255])
    assert (legend == red).all(-1).any(), "tau is not marked on the legend"
    assert (legend == white).all(-1).sum() > 20, "the reuse band / reused key is missing"
    assert _ink(img, (img.shape[0] - 1, img.shape[0], 0, img.shape[1])) == 0, "text touches the bottom edge"


def test_picture_legend_shows_the_reuse_band_width():
    """The white bracket above the ramp spans [tau, tau + delta]: twice the delta, twice as long."""
    def band(delta):
        pl = heatmap.payload(_record(delta=delta))
        img = heatmap.picture(pl, 0, scale=2)
        rows = (img == 255).all(-1)[-70:]  # the legend area
        return max(int(r.sum()) for r in rows)
    assert band(0.2) > band(0.1) + 20


def test_picture_names_what_it_shows():
    pl = heatmap.payload(_record())
    default = heatmap.picture(pl, 0)
    named = heatmap.picture(pl, 0, label="sample 7 (complexity 1.00)")
    assert default.shape == named.shape and (default[:30] != named[:30]).any(), "the label is not drawn"


def test_step_labels_never_touch():
    """Steps 10-19 once ran together ("10111213..."): at any count and cell width, the numbers printed
    are at least one number's width plus a gap apart."""
    from elastic_core.draw import font, text_width
    from PIL import Image, ImageDraw
    d, f = ImageDraw.Draw(Image.new("RGB", (1, 1))), font(13)
    for n_s in (4, 20, 30, 50, 200):
        for cw in (6, 12, 24):
            wide = text_width(d, str(n_s - 1), f)
            shown = heatmap._step_labels(n_s, cw, wide)
            assert shown[0] == 0 and all(b - a == shown[1] - shown[0] for a, b in zip(shown, shown[1:]))
            if len(shown) > 1:
                assert (shown[1] - shown[0]) * cw >= wide + 6, (n_s, cw)
