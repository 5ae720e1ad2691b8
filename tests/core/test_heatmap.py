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


def test_picture_has_names_axis_and_legend():
    from elastic_core import font
    pl = heatmap.payload(_record())
    img = heatmap.picture(pl, 0, scale=1)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    text = np.array([int(heatmap.PALETTE["text"][i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)
    label_w = font.text_width("x" * 18) + 6
    head = 2 * (font.H + 4) + 2
    for b in range(3):  # a block name in every row of the label column
        rows = img[head + b * 8: head + b * 8 + font.H, :label_w]
        assert (rows == text).all(-1).any(), f"no label for block {b}"
    ink = (img == text).all(-1)
    ramp_end = img.shape[1] - label_w  # the p ramp runs from label_w to here; "1" sits under its end
    assert ink[-font.H - 2:, ramp_end - font.W:ramp_end].any(), "the legend's '1' is missing at the ramp's end"
    assert not ink[:, -1].any() and not ink[-1].any(), "text touches the picture's edge (clipped)"
    big = heatmap.picture(pl, 0)
    assert big.shape[0] == 2 * img.shape[0] and big.shape[1] == 2 * img.shape[1]


def test_font_draws_every_character_it_knows():
    from elastic_core import font
    img = np.zeros((font.H, font.text_width("AB"), 3), dtype=np.uint8)
    font.draw_text(img, 0, 0, "ab", (255, 255, 255))
    assert (img[:, :font.W] > 0).any() and (img[:, font.W + 1:] > 0).any()
    assert all(g.shape == (font.H, font.W) for g in font.GLYPHS.values())
